"""The images: what they hold (and what they must not), who runs in them, the torch they run, the
smoke test that ends every build, both bases, and cached rebuilds.

The docker tests build through images/build.py with the prefix OVERNIGHT_IMAGE_PREFIX (default
`overnight`), so a developer can build beside the shared tags: OVERNIGHT_IMAGE_PREFIX=me pytest ...
The registry-base path is exercised with a stand-in for a CUDA PyTorch image, made here from the
local base (no registry is reachable here): a conda-like Python under /opt/conda with a torch of
its own (a 2.9.0 stub), a CPython stdlib copy in a package cache, and no compiler."""

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
from sandbox_support import REPO_ROOT

_spec = importlib.util.spec_from_file_location("images_build", REPO_ROOT / "images" / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules["images_build"] = build  # dataclasses look their module up
_spec.loader.exec_module(build)

PREFIX = os.environ.get("OVERNIGHT_IMAGE_PREFIX", "overnight")
LOCAL = build.Tags.named(PREFIX)
REGISTRY = build.Tags.named(f"{PREFIX}-fakecuda")  # the images built on the stand-in
STAND_IN = f"{PREFIX}-fakecuda-upstream:latest"  # plays BASE_IMAGE=<a CUDA PyTorch image>
BUILD_PY = str(REPO_ROOT / "images" / "build.py")
PIN = build.pinned_torch()

STAND_IN_DOCKERFILE = """
FROM {local_base}
RUN set -eu; \\
    mkdir -p /opt/conda/bin /opt/conda/lib /opt/conda/include /opt/conda/pkgs/python-3.11-0/lib; \\
    cp -a /usr/lib/python3.11 /opt/conda/lib/; cp -a /usr/lib/python3.11 /opt/conda/pkgs/python-3.11-0/lib/; \\
    cp -a /usr/include/python3.11 /opt/conda/include/; \\
    cp /usr/bin/python3.11 /opt/conda/bin/; \\
    ln -s python3.11 /opt/conda/bin/python3; ln -s python3 /opt/conda/bin/python; \\
    site="$(/opt/conda/bin/python3 -c 'import site; print(site.getsitepackages()[0])')"; \\
    mkdir -p "$site/torch" "$site/torch-2.9.0.dist-info"; \\
    echo '__version__ = "2.9.0"' > "$site/torch/__init__.py"; \\
    printf 'Metadata-Version: 2.1\\nName: torch\\nVersion: 2.9.0\\n' > "$site/torch-2.9.0.dist-info/METADATA"; \\
    dpkg --purge g++ gcc
ENV PATH=/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"""

# Files of a CPython stdlib test suite anywhere in an image (third-party packages' tests aside).
FIND_STDLIB_TESTS = (
    "find / -xdev \\( -name site-packages -o -name dist-packages \\) -prune -o "
    "-path '*/lib/python3*' -name 'test_*.py' -print"
)


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, BUILD_PY, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600
    )


def _built_or_fail(done: subprocess.CompletedProcess[str]) -> str:
    if done.returncode != 0:
        pytest.fail(f"images/build.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def _sh(client: docker.DockerClient, image: str, command: str, user: str = "1000:1000") -> str:
    out = client.containers.run(
        image, ["sh", "-c", command], network_mode="none", remove=True, entrypoint=[], user=user
    )
    return out.decode().strip()


def _py(client: docker.DockerClient, image: str, code: str) -> str:
    out = client.containers.run(image, ["python", "-c", code], network_mode="none", remove=True, entrypoint=[])
    return out.decode().strip()


@pytest.fixture(scope="module")
def local_build(docker_client: docker.DockerClient) -> str:
    """Every image on the local base, built (or confirmed from the cache); the build's output."""
    return _built_or_fail(_build("--prefix", PREFIX, "--force-smoke"))


@pytest.fixture(scope="module")
def registry_build(local_build: str, docker_client: docker.DockerClient) -> str:
    """Every image on the stand-in registry base; the build's output."""
    dockerfile = STAND_IN_DOCKERFILE.format(local_base=LOCAL.base).encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=STAND_IN, network_mode="none", rm=True, forcerm=True)
    return _built_or_fail(
        _build(
            "--prefix", f"{PREFIX}-fakecuda", "--base-image", STAND_IN, "--debian-image", LOCAL.base, "--force-smoke"
        )
    )


@pytest.fixture(params=["local", "registry"])
def flavour(request: pytest.FixtureRequest) -> tuple[build.Tags, str]:
    """The images of one base and the output of the build that made them."""
    if request.param == "local":
        return LOCAL, request.getfixturevalue("local_build")
    return REGISTRY, request.getfixturevalue("registry_build")


# --- the build script's pieces -------------------------------------------------------------


def test_make_setup_installs_the_torch_the_images_pin() -> None:
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval=print-torch-spec: ; @echo '$(TORCH_SPEC)'", "print-torch-spec"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"torch=={PIN}"
    assert PIN.count(".") == 2


def test_the_torch_pin_is_exactly_one_line(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# comment\ntorch==9.8.7  # the one\nnumpy==1.0\n")
    assert build.pinned_torch(reqs) == "9.8.7"
    assert build.wheel_requirements(False, reqs) == ["torch==9.8.7", "numpy==1.0"]
    assert build.wheel_requirements(True, reqs) == ["numpy==1.0"]
    for text in ("numpy==1.0\n", "torch==1.0\ntorch==2.0\n"):
        reqs.write_text(text)
        with pytest.raises(build.BuildError, match="exactly one `torch=="):
            build.pinned_torch(reqs)


def test_keeping_the_base_torch_is_an_explicit_choice_that_needs_a_torch() -> None:
    base = build.Base("pytorch/pytorch:x", "registry", "given")
    facts = build.PythonFacts("3.11", "/opt/conda/lib/python3.11", torch="2.9.0+cu128")
    assert build.image_torch(facts, keep_base_torch=False, base=base) == PIN
    assert build.image_torch(facts, keep_base_torch=True, base=base) == "2.9.0+cu128"
    with pytest.raises(build.BuildError, match="no torch to keep"):
        build.image_torch(build.PythonFacts("3.11", "/usr/lib/python3.11", None), True, base)


def test_debootstrap_uses_the_hosts_debian_mirror_deb822(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert build.host_debian_mirror(sources=[sources]) == "http://mirror.example/debian"


def test_debootstrap_uses_the_hosts_debian_mirror_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DEBIAN_MIRROR", raising=False)
    listing = tmp_path / "sources.list"
    listing.write_text(
        "# comment\ndeb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert build.host_debian_mirror(sources=[listing]) == "http://one.example/debian"
    assert build.host_debian_mirror(sources=[]) is None  # debootstrap's own default
    monkeypatch.setenv("DEBIAN_MIRROR", "http://override.example/debian")
    assert build.host_debian_mirror(sources=[listing]) == "http://override.example/debian"


def test_the_local_base_sheds_what_nothing_runs(tmp_path: Path) -> None:
    files = [
        "usr/share/doc/gcc/changelog.gz",
        "usr/lib/python3.11/config-3.11-x86_64-linux-gnu/libpython3.11.a",
        "usr/lib/python3.11/config-3.11-x86_64-linux-gnu/python-config.py",
        "usr/bin/x86_64-linux-gnu-lto-dump-12",
        "usr/bin/gcc-12",
        "usr/lib/python3.11/os.py",
        "usr/include/python3.11/Python.h",
    ]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    build.trim_rootfs(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["usr/bin/gcc-12", "usr/include/python3.11/Python.h", "usr/lib/python3.11/os.py"]
    assert (tmp_path / "usr/share/doc").is_dir()


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


def test_the_local_base_is_chosen_without_base_image_even_on_a_gpu_host(monkeypatch) -> None:
    monkeypatch.setattr(build, "host_has_nvidia_gpu", lambda: True)
    base = build.choose_base(client=None, mode="auto", base_image=None)
    assert (base.image, base.kind) == (build.TAGS.base, "local")
    with pytest.raises(build.BuildError, match="needs an image"):
        build.choose_base(client=None, mode="registry", base_image=None)


def test_an_unreachable_registry_falls_back_to_the_local_base(monkeypatch) -> None:
    monkeypatch.setattr(build, "try_pull", lambda client, ref: "registry unreachable")
    base = build.choose_base(client=None, mode="auto", base_image="pytorch/pytorch:x-cuda-y")
    assert base.kind == "local" and "registry unreachable" in base.why
    with pytest.raises(build.BuildError, match="--base local"):
        build.choose_base(client=None, mode="registry", base_image="pytorch/pytorch:x-cuda-y")


def test_the_smoke_test_asks_for_the_gpu_where_there_is_one(monkeypatch) -> None:
    monkeypatch.setattr(build, "host_has_nvidia_gpu", lambda: True)
    assert build.smoke_device("auto") == "cuda" and build.smoke_device("cpu") == "cpu"
    monkeypatch.setattr(build, "host_has_nvidia_gpu", lambda: False)
    assert build.smoke_device("auto") == "cpu"


# --- the built images, on both bases -------------------------------------------------------


@pytest.mark.docker
def test_runtime_image_has_the_compiler_toolchain(flavour, docker_client) -> None:
    tags, _ = flavour
    out = _sh(
        docker_client,
        tags.runtime,
        "gcc --version | head -n1; g++ --version | head -n1; "
        "python3 -c 'import sysconfig, os; "
        'print(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))\'',
    )
    gcc, gxx, has_header = out.splitlines()
    assert gcc.startswith("gcc") and gxx.startswith("g++")
    assert has_header == "True"


@pytest.mark.docker
def test_images_run_the_pinned_torch_and_carry_it_in_a_label(flavour, docker_client) -> None:
    tags, _ = flavour
    for tag in (tags.runtime, tags.evaluator, tags.prepare):
        assert docker_client.images.get(tag).labels[build.LABEL_TORCH] == PIN
    version = _py(docker_client, tags.evaluator, "import torch; print(torch.__version__)")
    assert version.split("+")[0] == PIN
    assert importlib.metadata.version("torch").split("+")[0] == PIN  # what the tests run on


@pytest.mark.docker
def test_the_build_ends_with_a_smoke_test_in_the_evaluator_image(flavour) -> None:
    tags, output = flavour
    lines = output.splitlines()
    assert any(
        line.startswith(f"[images] smoke test in {tags.evaluator}: torch {PIN}")
        and "compile" in line
        and "export" in line
        for line in lines
    )
    smoke_s = [float(line.split()[1]) for line in lines if line.startswith("smoke_s: ")]
    assert len(smoke_s) == 1 and smoke_s[0] > 0


@pytest.mark.docker
def test_stdlib_test_suite_is_absent_for_training_and_present_for_preparation(flavour, docker_client) -> None:
    tags, _ = flavour
    count = (
        "import sysconfig; from pathlib import Path; from evaluator.datasets import "
        "stdlib_files; print(len(stdlib_files(Path(sysconfig.get_paths()['stdlib']))[1]))"
    )
    for tag in (tags.runtime, tags.evaluator):
        assert _sh(docker_client, tag, FIND_STDLIB_TESTS, user="0") == ""  # root sees all
    assert int(_py(docker_client, tags.evaluator, count)) == 0
    assert int(_py(docker_client, tags.prepare, count)) > 500


@pytest.mark.docker
def test_a_conda_like_registry_base_gets_its_suite_where_its_python_looks(registry_build, docker_client) -> None:
    where = (
        "import sysconfig, torch, os; s = sysconfig.get_paths()['stdlib']; "
        "print(s, torch.__version__, os.path.exists(s + '/test/test_grammar.py'))"
    )
    stdlib, version, has_suite = _py(docker_client, REGISTRY.prepare, where).split()
    assert stdlib == "/opt/conda/lib/python3.11" and has_suite == "True"
    assert version.split("+")[0] == PIN  # not the base's own 2.9.0
    assert docker_client.images.get(REGISTRY.runtime).labels[build.LABEL_BASE] == STAND_IN
    has_compiler = "command -v gcc >/dev/null && command -v g++ >/dev/null && echo yes || echo no"
    assert _sh(docker_client, STAND_IN, has_compiler) == "no"  # base.Dockerfile installed it
    assert _sh(docker_client, REGISTRY.registry_base, has_compiler) == "yes"


@pytest.mark.docker
def test_a_broken_image_fails_the_smoke_test(local_build, docker_client) -> None:
    broken = f"{PREFIX}-broken-smoke:latest"
    dockerfile = (
        f"FROM {LOCAL.evaluator}\nUSER root\nRUN rm -f /usr/bin/*g++* /usr/bin/*c++*\nUSER 1000:1000\n"
    ).encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=broken, network_mode="none", rm=True, forcerm=True)
    try:
        with pytest.raises(build.BuildError, match=r"smoke test failed in .* on cpu: .*C\+\+ compiler"):
            build.smoke_test(docker_client, broken, "cpu")
    finally:
        docker_client.images.remove(broken, force=True)


# --- the evaluator image's contract ----------------------------------------------------------


@pytest.mark.docker
def test_evaluator_image_has_the_user_the_sandbox_runs_as(local_build, docker_client) -> None:
    facts = json.loads(
        _py(
            docker_client,
            LOCAL.evaluator,
            "import json, os, pwd; e = pwd.getpwuid(1000); print(json.dumps([os.getuid(), e.pw_name, e.pw_dir]))",
        )
    )
    assert facts == [1000, "overnight", "/home/overnight"]


@pytest.mark.docker
def test_evaluator_package_is_root_owned_and_read_only(local_build, docker_client) -> None:
    facts = json.loads(
        _py(
            docker_client,
            LOCAL.evaluator,
            """
import json, os, evaluator
root = os.path.dirname(evaluator.__file__)
stats = [os.stat(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names + ['.']]
print(json.dumps([root, {s.st_uid for s in stats} == {0}, any(s.st_mode & 0o222 for s in stats)]))
""",
        )
    )
    assert facts == ["/opt/overnight/evaluator", True, False]


@pytest.mark.docker
def test_runtime_has_the_pinned_dependencies(local_build, docker_client) -> None:
    versions = json.loads(
        _py(
            docker_client,
            LOCAL.evaluator,
            """
import json, importlib.metadata as md
print(json.dumps({n: md.version(n).split('+')[0] for n in
      ['torch', 'numpy', 'tiktoken', 'pyarrow', 'rustbpe', 'pydantic', 'tenacity', 'structlog']}))
""",
        )
    )
    pins = dict(line.split("==") for line in build.requirement_lines())
    assert {name: versions[name] for name in pins} == pins


@pytest.mark.docker
def test_a_rebuild_with_nothing_changed_is_all_cache(local_build, docker_client) -> None:
    before = {tag: docker_client.images.get(tag).id for tag in (LOCAL.evaluator, LOCAL.prepare)}
    output = _built_or_fail(_build("--prefix", PREFIX))
    assert "skipping debootstrap" in output and "wheelhouse up to date" in output
    assert "smoke test: passed before for exactly this image" in output  # not paid again
    after = {tag: docker_client.images.get(tag).id for tag in before}
    assert after == before
