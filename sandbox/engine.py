"""The Docker engine connection and image lookups (docker SDK only)."""

from __future__ import annotations

import functools

import docker
import docker.errors

from sandbox.errors import SandboxError


@functools.lru_cache(maxsize=1)
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise SandboxError(
            f"no Docker engine reachable ({type(exc).__name__}): start dockerd or set DOCKER_HOST"
        ) from None
    return client


def image_id(client: docker.DockerClient, ref: str) -> str:
    """The content id (sha256:...) of `ref`; containers are created from the id, so both
    containers of a run use exactly the same image even if the tag moves meanwhile."""
    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        raise SandboxError(f"image {ref} not found: run `make images`") from None


def docker_runtimes(docker_info: dict | None = None) -> set[str]:
    """Runtimes the Docker engine offers (e.g. {'runc', 'nvidia'}); empty when it cannot be asked."""
    if docker_info is None:
        try:
            client = docker.from_env(timeout=5)
            try:
                docker_info = client.info()
            finally:
                client.close()
        except Exception:
            return set()
    return set((docker_info or {}).get("Runtimes") or {})
