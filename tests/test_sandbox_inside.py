"""What training code finds inside its container: the pitfalls torch trips on are handled, and
the lockdown holds from the inside (user, capabilities, network, files it must not see)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import script, spec_for

from sandbox.experiment import run_experiment

pytestmark = pytest.mark.docker

PROBE_PY = r"""
import getpass, json, os, shutil, subprocess, sys, sysconfig
from pathlib import Path

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.strerror

r = {}
st = os.statvfs("/dev/shm")
r["shm_bytes"] = st.f_blocks * st.f_frsize
shutil.copy("/bin/true", "/tmp/tool")
os.chmod("/tmp/tool", 0o755)
r["tmp_exec"] = subprocess.run(["/tmp/tool"]).returncode
r["user"] = getpass.getuser()
r["uid"], r["gid"] = os.getuid(), os.getgid()
r["home_writable"] = attempt(lambda: (Path.home() / ".cache" / "x").mkdir(parents=True))
r["root_write"] = attempt(lambda: open("/etc/overnight-was-here", "w"))
r["evaluator_write"] = attempt(lambda: open("/opt/overnight/evaluator/score.py", "a"))
r["data_write"] = attempt(lambda: open("/data/train/new.bin", "w"))
r["data"] = sorted(os.listdir("/data"))
r["net_interfaces"] = sorted(os.listdir("/sys/class/net"))
r["docker_socket"] = os.path.exists("/var/run/docker.sock") or os.path.exists("/run/docker.sock")
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
r["cap_eff"] = status["CapEff"].strip()
r["no_new_privs"] = status["NoNewPrivs"].strip()
from evaluator.datasets import stdlib_files
r["stdlib_val_files"] = len(stdlib_files(Path(sysconfig.get_paths()["stdlib"]))[1])
r["out_exec"] = attempt(lambda: (shutil.copy("/bin/true", "/out/tool"), os.chmod("/out/tool", 0o755),
                                  subprocess.run(["/out/tool"], check=True)))
import torch
r["torch_threads"] = torch.get_num_threads()
print("PROBE " + json.dumps(r), flush=True)
"""


@pytest.fixture(scope="module")
def inside(images: str, stub_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("inside")
    spec = spec_for(tmp, script(tmp, PROBE_PY), stub_data_dir, "inside-probe")
    result = run_experiment(spec)
    log = (spec.run_dir / "train.log").read_text()
    assert result.train_exit_code == 0, log[-2000:]
    return json.loads(next(line for line in log.splitlines() if line.startswith("PROBE "))[6:])


def test_dev_shm_is_larger_than_dockers_64mb_default(inside) -> None:
    assert inside["shm_bytes"] > 64 * 2**20
    assert inside["shm_bytes"] >= 2 * 2**30


def test_tmp_allows_executing_what_was_compiled_there(inside) -> None:
    assert inside["tmp_exec"] == 0


def test_user_has_a_passwd_entry_and_a_writable_home(inside) -> None:
    assert inside["user"] == "overnight"  # getpass.getuser() works: Inductor needs it
    assert (inside["uid"], inside["gid"]) == (1000, 1000)
    assert inside["home_writable"] == "ok"


def test_root_filesystem_evaluator_and_data_are_not_writable(inside) -> None:
    assert inside["root_write"] == "Read-only file system"
    assert inside["evaluator_write"] in ("Read-only file system", "Permission denied")
    assert inside["data_write"] == "Read-only file system"


def test_training_sees_train_data_but_no_validation(inside) -> None:
    assert inside["data"] == ["manifest.json", "tokenizer", "train"]
    assert inside["stdlib_val_files"] == 0  # the stdlib test suite is not in the image


def test_nothing_in_out_can_be_executed(inside) -> None:
    assert inside["out_exec"] == "Permission denied"  # /out is mounted noexec


def test_no_network_no_capabilities_no_privilege_gain_no_docker_socket(inside) -> None:
    assert inside["net_interfaces"] == ["lo"]
    assert int(inside["cap_eff"], 16) == 0
    assert inside["no_new_privs"] == "1"
    assert inside["docker_socket"] is False
