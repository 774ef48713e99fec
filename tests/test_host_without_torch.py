"""The host side never imports torch: the controller and the sandbox run from a virtualenv without it
(README, "virtualenv"; docs/architecture.md, "Rooms")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = (
    "controller",
    "controller.cli",
    "controller.loop",
    "sandbox",
    "sandbox.experiment",
    "sandbox.docker_runner",
)
# Modules of the host packages documented as needing torch: none.
NEEDS_TORCH: frozenset[str] = frozenset()

PROBE = """
import importlib, json, pkgutil, sys
names = list(sys.argv[1].split(","))
for package in ("controller", "sandbox"):
    module = importlib.import_module(package)
    names += [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")]
needs_torch = set(sys.argv[2].split(",")) - {""}
imported = []
for name in names:
    if name in needs_torch or name.endswith(".__main__"):  # __main__ runs the CLI
        continue
    importlib.import_module(name)
    imported.append(name)
torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps({"imported": imported, "torch": torch}))
"""


def test_importing_every_host_module_never_imports_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(ENTRY_POINTS), ",".join(NEEDS_TORCH)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"controller.loop", "sandbox.docker_runner", "sandbox.kubernetes.runner"} <= set(found["imported"])
    assert len(found["imported"]) > 40  # every module of both packages, not only the entry points
    assert found["torch"] == [], f"the host side imported torch: {found['torch'][:5]}"
