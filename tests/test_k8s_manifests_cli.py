"""`python -m controller k8s-manifests --profile P` prints the objects one experiment creates on a
cluster, for a person to review: they validate against the Kubernetes schemas and are kept as
golden files (tests/golden/), so any change to them shows in review.

Regenerate the golden files after an intended change:
    UPDATE_GOLDEN=1 python -m pytest tests/test_k8s_manifests_cli.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = REPO_ROOT / "tests" / "golden"


def k8s_manifests(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVERNIGHT_", "KUBE"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "controller", "k8s-manifests", *args],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_the_printed_manifests_validate_and_match_the_golden_file(tmp_path: Path, profile: str) -> None:
    done = k8s_manifests(tmp_path, "--profile", profile)
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o is not None]
    assert [o["kind"] for o in objects] == [
        "NetworkPolicy",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
        "Pod",
        "PersistentVolumeClaim",
        "Job",
    ]
    for obj in objects:
        for version in ("1.28", "1.37"):
            kubernetes_validate.validate(obj, version, strict=True)
    golden = GOLDEN / f"k8s-manifests-{profile}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(done.stdout)
    assert done.stdout == golden.read_text(), f"differs from {golden}: UPDATE_GOLDEN=1 if intended"


def test_cluster_settings_show_in_the_manifests(tmp_path: Path) -> None:
    done = k8s_manifests(
        tmp_path,
        "--profile",
        "gpu",
        "--image-registry",
        "registry.example.com/team",
        "--storage-class",
        "topolvm",
        "--kube-runtime-class",
        "gvisor",
        "--gpu-resource-name",
        "nvidia.com/mig-1g.10gb",
        "--kube-namespace",
        "lab",
    )
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o is not None]
    jobs = [o for o in objects if o["kind"] == "Job"]
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["runtimeClassName"] == "gvisor"
        assert pod["containers"][0]["image"] == "registry.example.com/team/overnight-evaluator:latest"
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert {o["metadata"]["namespace"] for o in objects} == {"lab"}
    claims = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert {c["spec"]["storageClassName"] for c in claims} == {"topolvm"}


def test_a_bad_cluster_setting_is_one_line(tmp_path: Path) -> None:
    done = k8s_manifests(tmp_path, "--profile", "gpu", "--gpu-resource-name", "gpu")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        (
            "error: bad setting --gpu-resource-name / OVERNIGHT_GPU_RESOURCE_NAME: 'gpu' is not an "
            "extended resource name like nvidia.com/gpu"
        )
    ]
