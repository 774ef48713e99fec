"""The night's warm compile cache: written only by the trusted seed, handed to each train job as
a read-only file that the job's own trusted command unpacks into its tmpfs, never to an eval job,
and unchangeable by any run (sandbox.compile_cache, threat points 6 and 12).

The docker tests build through images/build.py like every docker test, or, with
OVERNIGHT_IMAGE_PREFIX=me, use the images built beside the shared tags (images/build.py --prefix me)."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path

import docker
import pytest
from sandbox_support import rid, script

from evaluator.profiles import get_profile
from sandbox import compile_cache, specs
from sandbox.compile_cache import cache_file, remove_compile_cache, warm_compile_cache
from sandbox.errors import SandboxError
from sandbox.experiment import run_experiment
from sandbox.limits import Limits
from sandbox.result import ExperimentSpec

PREFIX = os.environ.get("OVERNIGHT_IMAGE_PREFIX", "overnight")
LIMITS = Limits.for_profile(get_profile("test"))

# The trusted seed's stand-in: compiles something small (forward only, so the cold compile is short).
SEED_COMPILES = """
import torch
f = torch.compile(lambda x: (x.sin() * 2).sum())
print("seed value", float(f(torch.ones(8))), flush=True)
"""
SEED_COMPILES_NOTHING = """
print("no torch.compile here", flush=True)
"""
SEED_LEAVES_A_HUGE_CACHE = """
import os, pathlib
root = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
root.mkdir(parents=True, exist_ok=True)
(root / "big.bin").write_bytes(os.urandom(3 << 20))
"""
# An agent's train.py: reads the warm cache, tries to change the file, plants something for the next run.
AGENT = """
import os, pathlib, torch
from torch._dynamo.utils import counters
f = torch.compile(lambda x: (x.sin() * 2).sum())
f(torch.ones(8))
print("HITS", counters["inductor"]["fxgraph_cache_hit"], "MISSES", counters["inductor"]["fxgraph_cache_miss"])
for target in ("/cache/compile-cache.tar", "/cache/planted.bin"):
    try:
        with open(target, "ab") as fh:
            fh.write(b"pretrained weights")
        print("WROTE", target)
    except OSError as exc:
        print("REFUSED", target, exc.errno)
root = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
print("PLANTED_SEEN", (root / "planted.bin").exists(), flush=True)
(root / "planted.bin").write_bytes(b"pretrained weights from an earlier run")
"""


def _job(tmp_path: Path, cache: Path | None) -> specs.JobSpec:
    return specs.train_job(
        run_id="r1",
        image="img",
        profile="test",
        seed=0,
        gpu=None,
        memory_gb=2.0,
        data_dir=tmp_path,
        train_py=tmp_path / "train.py",
        limits=LIMITS,
        labels={},
        compile_cache=cache,
    )


# --- the job specs --------------------------------------------------------------------------------


def test_a_train_job_given_the_cache_mounts_it_read_only_and_unpacks_it_before_train_py(tmp_path: Path) -> None:
    cache = tmp_path / "compile-cache.tar"
    config = specs.container_config(_job(tmp_path, cache))
    mounts = {m["Target"]: m for m in config["mounts"]}
    assert mounts[specs.COMPILE_CACHE_INPUT]["Source"] == str(cache)
    assert mounts[specs.COMPILE_CACHE_INPUT]["ReadOnly"] is True
    writable = [target for target, m in mounts.items() if not m.get("ReadOnly")]
    assert writable == [specs.OUT]  # the cache adds nothing writable
    shell = config["command"][2]
    assert config["command"][:2] == ["sh", "-c"]
    assert shell.index(f"tar -xf {specs.COMPILE_CACHE_INPUT} -C {specs.COMPILE_CACHE_DIR}") < shell.index(
        f"exec python {specs.TRAIN_PY}"
    )
    assert specs.COMPILE_CACHE_DIR.startswith("/tmp/")  # the job's own tmpfs, gone with the job
    assert config["environment"]["TORCHINDUCTOR_CACHE_DIR"] == specs.COMPILE_CACHE_DIR
    assert config["environment"]["TRITON_CACHE_DIR"].startswith(specs.COMPILE_CACHE_DIR + "/")


def test_a_train_job_without_the_cache_is_exactly_as_before(tmp_path: Path) -> None:
    job = _job(tmp_path, None)
    assert job.command == ("python", specs.TRAIN_PY)
    assert set(job.inputs) == {specs.TRAIN_PY}
    assert job.environment == specs.train_environment("test", 0, None, LIMITS.train_budget_s)


def test_the_eval_job_never_gets_the_cache(tmp_path: Path) -> None:
    assert "compile_cache" not in inspect.signature(specs.eval_job).parameters
    job = specs.eval_job(
        run_id="r1",
        image="img",
        profile="test",
        gpu=None,
        memory_gb=2.0,
        data_dir=tmp_path,
        artifact=tmp_path / "model.pt2",
        limits=LIMITS,
        labels={},
    )
    config = specs.container_config(job)
    assert not any(m["Target"].startswith("/cache") for m in config["mounts"])
    assert not any(key.startswith(("TORCHINDUCTOR", "TRITON")) for key in config["environment"])


def test_the_warm_up_runs_the_seed_told_its_deadline_passed_and_packs_only_after_it_succeeded(tmp_path: Path) -> None:
    job = specs.warmup_job(
        run_id="w",
        image="img",
        profile="test",
        gpu=None,
        memory_gb=2.0,
        data_dir=tmp_path,
        seed_train_py=tmp_path / "seed.py",
        limits=LIMITS,
        labels={"overnight.tag": "t"},
    )
    assert job.role == "train" and job.inputs == {specs.TRAIN_PY: tmp_path / "seed.py"}
    assert job.environment["OVERNIGHT_BUDGET_S"] == f"{specs.WARMUP_BUDGET_S:g}"
    assert job.cap_s == max(LIMITS.train_cap_s, specs.WARMUP_MIN_CAP_S)  # a cold compile may take long
    shell = job.command[2]
    assert shell.startswith(f"python {specs.TRAIN_PY} && ")
    assert f"tar -cf {specs.OUT}/{specs.COMPILE_CACHE_NAME} -C {specs.COMPILE_CACHE_DIR} ." in shell
    assert job.labels["overnight.tag"] == "t"  # cleanup by the night's label finds its containers


def test_a_run_whose_cache_is_gone_fails_before_anything_starts(tmp_path: Path, stub_data_dir: Path) -> None:
    class NoJobs:
        name = "docker"
        data_on_host = True

        def image_id(self, ref: str) -> str:
            return "sha256:" + "0" * 64

        def __getattr__(self, verb: str) -> object:
            raise AssertionError(f"nothing may run: {verb} was called")

    train_py = script(tmp_path, "print('hi')\n")
    spec = ExperimentSpec(
        run_id="gone-cache",
        train_py=train_py,
        run_dir=tmp_path / "run",
        profile="test",
        data_dir=stub_data_dir,
        compile_cache=tmp_path / "compile-cache.tar",
    )
    with pytest.raises(SandboxError, match="compile cache .* is missing"):
        run_experiment(spec, runner=NoJobs())  # type: ignore[arg-type]


def test_removing_the_cache_removes_the_file_and_any_partial_copy(tmp_path: Path) -> None:
    cache_file(tmp_path).write_bytes(b"x")
    (tmp_path / f".{compile_cache.CACHE_FILE}.partial").write_bytes(b"y")
    assert remove_compile_cache(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert not remove_compile_cache(tmp_path)


def test_a_backend_that_cannot_mount_the_cache_gets_none(tmp_path: Path) -> None:
    class Cluster:
        name = "kubernetes"

    warm = warm_compile_cache(
        seed_train_py=tmp_path / "seed.py",
        tag_dir=tmp_path,
        run_id="w",
        profile="test",
        data_dir=tmp_path,
        runner=Cluster(),
    )  # type: ignore[arg-type]
    assert warm.status == "unsupported" and warm.path is None


# --- for real, in containers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> str:
    if PREFIX == "overnight":
        return str(request.getfixturevalue("images"))
    name = f"{PREFIX}-evaluator:latest"
    try:
        docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        pytest.fail(f"no image {name}: python images/build.py --prefix {PREFIX} --through evaluator")
    return name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _warm(tmp_path: Path, seed: str, data_dir: Path, image: str, name: str):  # type: ignore[no-untyped-def]
    return warm_compile_cache(
        seed_train_py=script(tmp_path, seed, "seed.py"),
        tag_dir=tmp_path / "night",
        run_id=rid(name),
        profile="test",
        data_dir=data_dir,
        image=image,
        memory_gb=2.0,
        labels={specs.LABEL_TAG: rid("cc-night")},
    )


@pytest.mark.docker
def test_the_warm_cache_makes_the_compile_a_hit_and_no_run_can_change_it_or_pass_anything_on(
    tmp_path: Path, stub_data_dir: Path, image: str, docker_client: docker.DockerClient
) -> None:
    warm = _warm(tmp_path, SEED_COMPILES, stub_data_dir, image, "cc-warm")
    assert warm.status == "ok", warm.reason
    assert warm.path == cache_file(tmp_path / "night") and warm.bytes == warm.path.stat().st_size > 0
    assert warm.sha256 == _sha256(warm.path)
    logs = []
    for n in (1, 2):
        spec = ExperimentSpec(
            run_id=rid(f"cc-agent-{n}"),
            train_py=script(tmp_path, AGENT, f"agent{n}.py"),
            run_dir=tmp_path / f"run{n}",
            profile="test",
            data_dir=stub_data_dir,
            image=image,
            memory_limit_gb=2.0,
            compile_cache=warm.path,
        )
        result = run_experiment(spec)
        assert result.status == "crash" and "no model.pt2" in (result.reason or "")  # it never submits
        logs.append((spec.run_dir / "train.log").read_text())
    for log in logs:
        hits, misses = map(int, re.search(r"HITS (\d+) MISSES (\d+)", log).groups())  # type: ignore[union-attr]
        assert hits >= 1 and misses == 0, log  # compiled from the seed's cache
        assert "WROTE" not in log and log.count("REFUSED") == 2  # the file and its folder are read-only
        assert "PLANTED_SEEN False" in log  # run 2 does not see what run 1 planted
    assert _sha256(warm.path) == warm.sha256
    leftover = docker_client.containers.list(all=True, filters={"label": f"{specs.LABEL_TAG}={rid('cc-night')}"})
    assert leftover == []


@pytest.mark.docker
def test_a_seed_that_compiles_nothing_leaves_no_cache(tmp_path: Path, stub_data_dir: Path, image: str) -> None:
    warm = _warm(tmp_path, SEED_COMPILES_NOTHING, stub_data_dir, image, "cc-empty")
    assert warm.status == "empty" and warm.path is None
    assert not cache_file(tmp_path / "night").exists()


@pytest.mark.docker
def test_a_cache_over_its_cap_is_refused_and_nothing_is_kept(
    tmp_path: Path, stub_data_dir: Path, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compile_cache, "MAX_CACHE_BYTES", 1 << 20)
    warm = _warm(tmp_path, SEED_LEAVES_A_HUGE_CACHE, stub_data_dir, image, "cc-huge")
    assert warm.status == "failed" and "cap" in (warm.reason or "")
    assert sorted(p.name for p in (tmp_path / "night").iterdir()) == [compile_cache.WARMUP_DIR]
