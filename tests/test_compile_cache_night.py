"""The night's warm compile cache reaches every train job of the night (issue 11): the loop hands
the one file the trusted warm-up wrote to every run, the baseline included, and never to a
preflight; it is on by default only where torch.compile pays (gpu, Docker). Each container's
memory limit defaults to the profile's measured size."""

from __future__ import annotations

from pathlib import Path

from controller_fakes import build_loop, make_repo

from controller.settings import load_settings
from evaluator.profiles import PROFILES


def test_every_run_of_the_night_gets_the_same_cache_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cache = tmp_path / "compile-cache.tar"
    cache.write_bytes(b"not opened by the controller")
    script = {1: {"set": {"LR": 0.01}, "desc": "LR 0.01"}, 2: {"set": {"DEPTH": 8}, "desc": "DEPTH 8"}}
    loop, _, runner, _ = build_loop(repo, "t1", script, max_experiments=2)
    loop.d.compile_cache = cache
    loop.run()
    assert len(runner.specs) >= 3
    assert {spec.compile_cache for spec in runner.specs} == {cache}


def test_without_a_cache_no_run_gets_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    loop, _, runner, _ = build_loop(repo, "t1", {}, max_experiments=1)
    loop.run()
    assert runner.specs and all(spec.compile_cache is None for spec in runner.specs)


def test_the_cache_is_on_by_default_only_for_gpu_nights_on_docker(tmp_path: Path) -> None:
    def on(**kw: object) -> bool:
        return load_settings(tag="t", repo=tmp_path, **kw).compile_cache_on

    assert on(profile="gpu") is True
    assert on(profile="cpu") is False
    assert on(profile="gpu", backend="kubernetes") is False  # a cluster job cannot mount the host file
    assert on(profile="gpu", sandbox="bare") is False
    assert on(profile="cpu", compile_cache=True) is True
    assert on(profile="gpu", compile_cache=False) is False


def test_container_memory_defaults_to_the_profile_and_can_be_set(tmp_path: Path) -> None:
    for name, profile in PROFILES.items():
        assert load_settings(tag="t", repo=tmp_path, profile=name).container_memory_gb == profile.memory_gb
    assert load_settings(tag="t", repo=tmp_path, profile="gpu", memory_limit_gb=40).container_memory_gb == 40
