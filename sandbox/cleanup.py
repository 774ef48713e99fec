"""Removing what a crash left behind (containers, keepers, volumes), found by label, never by
name or guess.

    python -m sandbox.cleanup            remove everything the sandbox ever made
    python -m sandbox.cleanup RUN_ID     only that run's
"""

from __future__ import annotations

import argparse
import sys

from sandbox.docker_runner import DockerRunner
from sandbox.errors import SandboxError


def remove_orphans(run_id: str | None = None, *, runner: DockerRunner | None = None) -> list[str]:
    """Force-remove the sandbox's containers and volumes (all, or one run's); returns their names."""
    return (runner or DockerRunner()).cleanup(run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.cleanup", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("run_id", nargs="?", default=None, help="only this run's containers and volumes")
    args = parser.parse_args(argv)
    try:
        removed = remove_orphans(args.run_id)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"removed {len(removed)} container(s) and volume(s)" + (f": {', '.join(removed)}" if removed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
