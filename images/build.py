"""Build the images, from the bottom layer up: base -> runtime -> evaluator -> prepare.

    python images/build.py [--base auto|local|registry] [--base-image IMAGE] [-v]

Two ways to get a base, both real:
- registry: pull BASE_IMAGE (a CUDA PyTorch image) and install the rest of the dependencies on
  top of its own torch. `auto` tries this when BASE_IMAGE is set or the host has an NVIDIA GPU.
- local: `debootstrap --variant=minbase` a Debian root with python3, `docker import` it as
  overnight-base:bookworm, and install torch plus the dependencies from wheels the host
  downloads with pip into images/.wheelhouse. Needs no container registry.
Whatever was picked is printed. Rebuilds are cached: an existing local base is reused, the
wheelhouse is downloaded once per requirements set, and docker's layer cache does the rest
(build contexts are packed deterministically so unchanged inputs hit the cache).
Image building talks to the engine through the docker SDK; debootstrap and pip run on the host.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
WHEELHOUSE = IMAGES / ".wheelhouse"
REQUIREMENTS = IMAGES / "requirements.txt"

DEFAULT_CUDA_BASE = "pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime"
TORCH_REQUIREMENT = "torch==2.13.0"  # the CPU wheel the bare runner uses too
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
# Trimmed from the debootstrapped root: never needed at run time.
ROOTFS_TRIM = ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man",
               "usr/share/info", "usr/share/locale")


class BuildError(RuntimeError):
    """A one-line reason the images could not be built, and what to do."""


@dataclass(frozen=True)
class Tags:
    base: str  # the local base (debootstrap + import)
    runtime: str
    evaluator: str  # what the sandbox runs (sandbox.result.ExperimentSpec.image)
    prepare: str

    @classmethod
    def named(cls, prefix: str) -> Tags:
        return cls(f"{prefix}-base:{SUITE}", f"{prefix}-runtime:latest",
                   f"{prefix}-evaluator:latest", f"{prefix}-prepare:latest")


TAGS = Tags.named("overnight")


@dataclass(frozen=True)
class Base:
    image: str
    kind: str  # "local" or "registry"
    why: str


@dataclass(frozen=True)
class PythonFacts:
    version: str  # "3.11"
    stdlib: str  # e.g. /usr/lib/python3.11


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# choosing the base


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def host_has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: all mean "no GPU here"
        return False


def try_pull(client: docker.DockerClient, ref: str) -> str | None:
    """None when the image is here (pulled or already local), else why not."""
    if image_exists(client, ref):
        return None
    repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    try:
        log(f"pulling {ref} ...")
        client.images.pull(repo, tag=tag)
        return None
    except docker.errors.APIError as exc:
        return str(exc.explanation or exc).splitlines()[0]


def choose_base(client: docker.DockerClient, mode: str, base_image: str | None,
                local_base: str = TAGS.base) -> Base:
    if mode == "local":
        return Base(local_base, "local", "asked for the local base")
    wanted = base_image or DEFAULT_CUDA_BASE
    if mode == "auto" and base_image is None and not host_has_nvidia_gpu():
        return Base(local_base, "local", "no NVIDIA GPU on this host and no BASE_IMAGE given")
    failure = try_pull(client, wanted)
    if failure is None:
        return Base(wanted, "registry", f"pulled {wanted}")
    if mode == "registry":
        raise BuildError(f"cannot pull {wanted}: {failure}; use --base local for an offline build")
    return Base(local_base, "local", f"registry not usable ({failure}); built offline instead")


# ---------------------------------------------------------------------------------------------
# the local base: debootstrap + docker import


def apt_source_files(etc_apt: Path = Path("/etc/apt")) -> list[Path]:
    return [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]


def host_debian_mirror(suite: str = SUITE, sources: list[Path] | None = None) -> str | None:
    """The Debian mirror the host's apt uses for `suite`, so debootstrap fetches from the same
    place; None lets debootstrap use its own default. DEBIAN_MIRROR overrides."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    for path in sources if sources is not None else apt_source_files():
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, flags=re.M))
                if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", ""):
                    return fields.get("URIs", "").split()[0] or None
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                    return parts[1]
    return None


def build_local_base(client: docker.DockerClient, tag: str) -> None:
    if image_exists(client, tag):
        log(f"{tag} exists: skipping debootstrap")
        return
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed: `apt-get install debootstrap`, then retry")
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root: run `sudo make images` once to make the base")
    mirror = host_debian_mirror()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overnight-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               SUITE, str(rootfs)] + ([mirror] if mirror else [])
        log(f"debootstrap {SUITE} (minbase + {', '.join(BASE_PACKAGES)}) ...")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["?"]
            raise BuildError(f"debootstrap failed: {tail[0]}")
        for rel in ROOTFS_TRIM:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."],
                       check=True)
        repo, version = tag.split(":")
        client.api.import_image_from_file(
            str(archive), repository=repo, tag=version,
            changes=['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                     'CMD ["/bin/bash"]'],
        )
    log(f"{tag} imported in {time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------
# python facts and the wheelhouse


def probe_python(client: docker.DockerClient, image: str) -> PythonFacts:
    script = ("import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % "
              "sys.version_info[:2], 'stdlib': sysconfig.get_paths()['stdlib']}))")
    out = client.containers.run(image, ["python3", "-c", script], entrypoint=[],
                                network_mode="none", remove=True, user="0")
    return PythonFacts(**json.loads(out.decode().strip().splitlines()[-1]))


def wheel_requirements(base: Base) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in REQUIREMENTS.read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    return reqs + ([TORCH_REQUIREMENT] if base.kind == "local" else [])


def ensure_wheelhouse(reqs: list[str], python: PythonFacts) -> None:
    """Download the wheels for the image's Python once; a stamp records what is inside."""
    arch = platform.machine()
    key = hashlib.sha256(json.dumps([reqs, python.version, arch]).encode()).hexdigest()
    stamp = WHEELHOUSE / ".stamp"
    if stamp.exists() and stamp.read_text().strip() == key:
        log("wheelhouse up to date")
        return
    if WHEELHOUSE.exists():
        shutil.rmtree(WHEELHOUSE)
    WHEELHOUSE.mkdir(parents=True)
    platforms = [f"manylinux_2_{m}_{arch}" for m in (28, 27, 17)] + [f"manylinux2014_{arch}"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
           "--python-version", python.version, "--implementation", "cp",
           *[arg for p in platforms for arg in ("--platform", p)], "-d", str(WHEELHOUSE), *reqs]
    log(f"downloading wheels for Python {python.version} ({len(reqs)} requirements) ...")
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise BuildError(f"pip download failed: {tail}")
    stamp.write_text(key + "\n")
    size = sum(p.stat().st_size for p in WHEELHOUSE.glob("*.whl")) / 2**20
    log(f"wheelhouse: {len(list(WHEELHOUSE.glob('*.whl')))} wheels, {size:.0f} MiB, "
        f"{time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------
# docker builds with deterministic contexts


def context_files(patterns: Iterable[str]) -> list[Path]:
    files: set[Path] = set()
    for pattern in patterns:
        for path in REPO.glob(pattern):
            if path.is_file() and "__pycache__" not in path.parts and path.name != ".stamp":
                files.add(path)
    return sorted(files)


def pack_context(files: list[Path], into: io.BufferedRandom) -> None:
    """A tar of `files` (paths relative to the repo) with fixed owners and times, so the same
    inputs give the same layer cache keys whatever their mtimes."""
    with tarfile.open(fileobj=into, mode="w") as tar:
        for path in files:
            info = tarfile.TarInfo(str(path.relative_to(REPO)))
            info.size = path.stat().st_size
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    into.seek(0)


def docker_build(client: docker.DockerClient, tag: str, dockerfile: str, files: list[Path],
                 buildargs: dict[str, str], verbose: bool) -> str:
    t0 = time.monotonic()
    with tempfile.TemporaryFile(dir="/var/tmp") as ctx:
        pack_context(files, ctx)
        stream = client.api.build(fileobj=ctx, custom_context=True, dockerfile=dockerfile,
                                  tag=tag, buildargs=buildargs, rm=True, forcerm=True,
                                  pull=False, decode=True)
        image_id, cached, steps = None, 0, 0
        for chunk in stream:
            if "error" in chunk:
                raise BuildError(f"building {tag} failed: {chunk['error'].strip().splitlines()[-1]}")
            line = chunk.get("stream", "")
            steps += line.startswith("Step ")
            cached += "Using cache" in line
            if verbose and line.strip():
                print(line.rstrip(), flush=True)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    image_id = image_id or client.images.get(tag).id
    log(f"{tag}: {image_id[:19]} in {time.monotonic() - t0:.1f} s ({cached} cached steps)")
    return image_id


def build_all(mode: str, base_image: str | None, verbose: bool,
              only_through: str = "prepare", tags: Tags = TAGS) -> Base:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise BuildError(f"no Docker engine reachable ({exc.__class__.__name__}): start dockerd") from None
    base = choose_base(client, mode, base_image, tags.base)
    log(f"base: {base.image} [{base.kind}] because {base.why}")
    if base.kind == "local":
        build_local_base(client, tags.base)
    python = probe_python(client, base.image)
    reqs = wheel_requirements(base)
    ensure_wheelhouse(reqs, python)
    torch_req = TORCH_REQUIREMENT if base.kind == "local" else ""
    docker_build(client, tags.runtime, "images/runtime.Dockerfile",
                 context_files(["images/runtime.Dockerfile", "images/requirements.txt",
                                "images/.wheelhouse/*"]),
                 {"BASE_IMAGE": base.image, "TORCH_REQUIREMENT": torch_req}, verbose)
    if only_through == "runtime":
        return base
    docker_build(client, tags.evaluator, "images/evaluator.Dockerfile",
                 context_files(["images/evaluator.Dockerfile", "evaluator/**/*.py",
                                "evaluator/**/*.json", "evaluator/**/*.txt"]),
                 {"RUNTIME_IMAGE": tags.runtime}, verbose)
    if only_through == "evaluator":
        return base
    docker_build(client, tags.prepare, "images/prepare.Dockerfile",
                 context_files(["images/prepare.Dockerfile"]),
                 {"BASE_IMAGE": base.image, "EVALUATOR_IMAGE": tags.evaluator}, verbose)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", choices=["auto", "local", "registry"],
                        default=os.environ.get("OVERNIGHT_BASE", "auto"))
    parser.add_argument("--base-image", default=os.environ.get("BASE_IMAGE") or None,
                        help=f"registry base image (default for GPU hosts: {DEFAULT_CUDA_BASE})")
    parser.add_argument("--through", choices=["runtime", "evaluator", "prepare"], default="prepare",
                        help="stop after this image")
    parser.add_argument("--prefix", default="overnight",
                        help="image names: PREFIX-base, PREFIX-runtime, PREFIX-evaluator, PREFIX-prepare")
    parser.add_argument("-v", "--verbose", action="store_true", help="show docker build output")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        tags = Tags.named(args.prefix)
        base = build_all(args.base, args.base_image, args.verbose, args.through, tags)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log(f"built the {base.kind} way (base {base.image}) in {time.monotonic() - t0:.0f} s: "
        f"{tags.runtime}, {tags.evaluator}" + (f", {tags.prepare}" if args.through == "prepare" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
