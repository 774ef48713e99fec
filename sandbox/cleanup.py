"""Removing containers a crash left behind, found by label (never by name or guess).

    python -m sandbox.cleanup            remove every container the sandbox ever made
    python -m sandbox.cleanup RUN_ID     only that run's
"""

from __future__ import annotations

import argparse
import sys

import docker
import docker.errors

from sandbox.engine import docker_client
from sandbox.errors import SandboxError
from sandbox.specs import LABEL_RUN


def orphans(client: docker.DockerClient, run_id: str | None = None) -> list:
    label = LABEL_RUN if run_id is None else f"{LABEL_RUN}={run_id}"
    return client.containers.list(all=True, filters={"label": label})


def remove_orphans(run_id: str | None = None, *, client: docker.DockerClient | None = None) -> list[str]:
    """Force-remove the sandbox's containers (all of them, or one run's); returns their names."""
    client = client or docker_client()
    removed = []
    for container in orphans(client, run_id):
        try:
            container.remove(force=True, v=True)
            removed.append(container.name)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: the engine is already removing it
                raise
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.cleanup", description=__doc__.split("\n")[0])
    parser.add_argument("run_id", nargs="?", default=None, help="only this run's containers")
    args = parser.parse_args(argv)
    try:
        removed = remove_orphans(args.run_id)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"removed {len(removed)} container(s)" + (f": {', '.join(removed)}" if removed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
