"""The images: what they hold (and what they must not), who runs in them, and cached rebuilds."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from sandbox_support import EVALUATOR_IMAGE, PREPARE_IMAGE, REPO_ROOT

_spec = importlib.util.spec_from_file_location("images_build", REPO_ROOT / "images" / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules["images_build"] = build  # dataclasses look their module up
_spec.loader.exec_module(build)


# --- the build script's pieces -------------------------------------------------------------


def test_debootstrap_uses_the_hosts_debian_mirror_deb822(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert build.host_debian_mirror(sources=[sources]) == "http://mirror.example/debian"


def test_debootstrap_uses_the_hosts_debian_mirror_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    listing = tmp_path / "sources.list"
    listing.write_text("# comment\ndeb-src http://src.example/debian bookworm main\n"
                       "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n")
    assert build.host_debian_mirror(sources=[listing]) == "http://one.example/debian"
    assert build.host_debian_mirror(sources=[]) is None  # debootstrap's own default
    monkeypatch.setenv("DEBIAN_MIRROR", "http://override.example/debian")
    assert build.host_debian_mirror(sources=[listing]) == "http://override.example/debian"


def test_build_contexts_do_not_depend_on_file_times(tmp_path: Path) -> None:
    files = build.context_files(["images/evaluator.Dockerfile", "evaluator/*.py"])
    assert any(p.name == "score.py" for p in files)
    assert not any("__pycache__" in p.parts for p in files)
    first, second = io.BytesIO(), io.BytesIO()
    build.pack_context(files, first)
    target = REPO_ROOT / "images" / "evaluator.Dockerfile"
    stat = target.stat()
    os.utime(target, (stat.st_atime, stat.st_mtime + 3600))
    try:
        build.pack_context(files, second)
    finally:
        os.utime(target, (stat.st_atime, stat.st_mtime))
    assert first.getvalue() == second.getvalue()


def test_local_base_is_chosen_without_gpu_or_base_image(monkeypatch) -> None:
    monkeypatch.setattr(build, "host_has_nvidia_gpu", lambda: False)
    base = build.choose_base(client=None, mode="auto", base_image=None)
    assert (base.image, base.kind) == (build.TAGS.base, "local")


def test_an_unreachable_registry_falls_back_to_the_local_base(monkeypatch) -> None:
    monkeypatch.setattr(build, "try_pull", lambda client, ref: "registry unreachable")
    base = build.choose_base(client=None, mode="auto", base_image="pytorch/pytorch:x-cuda-y")
    assert base.kind == "local" and "registry unreachable" in base.why
    with pytest.raises(build.BuildError, match="--base local"):
        build.choose_base(client=None, mode="registry", base_image="pytorch/pytorch:x-cuda-y")


# --- the built images ----------------------------------------------------------------------


def _run(client: docker.DockerClient, image: str, code: str) -> str:
    out = client.containers.run(image, ["python", "-c", code], network_mode="none", remove=True,
                                entrypoint=[])
    return out.decode().strip()


@pytest.mark.docker
def test_evaluator_image_has_the_user_the_sandbox_runs_as(images, docker_client) -> None:
    facts = json.loads(_run(docker_client, EVALUATOR_IMAGE,
                            "import json, os, pwd; e = pwd.getpwuid(1000); "
                            "print(json.dumps([os.getuid(), e.pw_name, e.pw_dir]))"))
    assert facts == [1000, "overnight", "/home/overnight"]


@pytest.mark.docker
def test_evaluator_package_is_root_owned_and_read_only(images, docker_client) -> None:
    facts = json.loads(_run(docker_client, EVALUATOR_IMAGE, """
import json, os, evaluator
root = os.path.dirname(evaluator.__file__)
stats = [os.stat(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names + ['.']]
print(json.dumps([root, {s.st_uid for s in stats} == {0}, any(s.st_mode & 0o222 for s in stats)]))
"""))
    assert facts == ["/opt/overnight/evaluator", True, False]


@pytest.mark.docker
def test_runtime_has_the_pinned_torch_and_the_evaluators_dependencies(images, docker_client) -> None:
    versions = json.loads(_run(docker_client, EVALUATOR_IMAGE, """
import json, importlib.metadata as md
print(json.dumps({n: md.version(n) for n in
      ['torch', 'numpy', 'tiktoken', 'pyarrow', 'rustbpe', 'pydantic', 'tenacity', 'structlog']}))
"""))
    assert versions["torch"].split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    pins = dict(line.split("==") for line in (REPO_ROOT / "images" / "requirements.txt")
                .read_text().splitlines() if "==" in line and not line.startswith("#"))
    assert {name: versions[name] for name in pins} == pins


@pytest.mark.docker
def test_stdlib_test_suite_is_absent_for_training_and_present_for_preparation(
        images, docker_client) -> None:
    count = ("import sysconfig; from pathlib import Path; from evaluator.datasets import "
             "stdlib_files; print(len(stdlib_files(Path(sysconfig.get_paths()['stdlib']))[1]))")
    assert int(_run(docker_client, EVALUATOR_IMAGE, count)) == 0
    assert int(_run(docker_client, PREPARE_IMAGE, count)) > 500


@pytest.mark.docker
def test_a_rebuild_with_nothing_changed_is_all_cache(images, docker_client) -> None:
    before = {tag: docker_client.images.get(tag).id for tag in (EVALUATOR_IMAGE, PREPARE_IMAGE)}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "images" / "build.py")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "skipping debootstrap" in done.stdout and "wheelhouse up to date" in done.stdout
    after = {tag: docker_client.images.get(tag).id for tag in before}
    assert after == before
