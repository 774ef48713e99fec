"""Shared fixtures. Docker-backed ones skip (with the reason) when no engine answers, so
`make unit` runs everywhere; `make test` runs everything.

- test_data_dir: the `test` profile prepared from the stdlib dataset, once per session.
- docker_client / images: the engine, and the images built once per session (images/build.py).
- stub_data_dir: a data dir with the right layout but no real data, for runs never scored.
- adversarial: the adversarial night (tests/adversarial/night.py), run once per session for
  the two modules that read it (test_adversarial_train.py, test_adversarial_agent_tools.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.specs import DEFAULT_IMAGE

REPO_ROOT = Path(__file__).resolve().parent.parent
EVALUATOR_IMAGE = DEFAULT_IMAGE
_BUILT: dict[str, bool] = {}
# A test that uses one of these (directly or through other fixtures) needs the Docker engine.
DOCKER_FIXTURES = frozenset({"docker_client", "images"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the engine `docker`, so `make unit` (-m "not docker") leaves it out.

    item.fixturenames is the whole fixture closure, so a fixture built on `images` counts too."""
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def seed_train_py() -> Path:
    return REPO_ROOT / "programs" / "default" / "train.py"


@pytest.fixture(scope="session")
def test_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `test` profile prepared from the stdlib dataset, once per session."""
    out = tmp_path_factory.mktemp("data") / "test"
    subprocess.run(
        [sys.executable, "-m", "evaluator.prepare", "--profile", "test", "--dataset", "stdlib", "--out", str(out)],
        cwd=REPO_ROOT,
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    """The Docker engine; the test is skipped, saying why, when none answers."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # no SDK connection, no socket, no permission
        pytest.skip(f"no Docker engine answers ({type(exc).__name__}): start dockerd to run the docker tests")
    return client


@pytest.fixture(scope="session")
def images(docker_client) -> str:  # type: ignore[no-untyped-def]
    """Build (or confirm, from the cache) every image once per session; the evaluator image's tag."""
    if not _BUILT:
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / "images" / "build.py")], cwd=REPO_ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(f"images/build.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        _BUILT["done"] = True
    return EVALUATOR_IMAGE


@pytest.fixture(scope="session")
def stub_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with the right layout but no real data: for runs that never get scored."""
    root = tmp_path_factory.mktemp("stub-data")
    for part in ("tokenizer", "train", "val", "eval"):
        (root / part).mkdir()
    (root / "manifest.json").write_text("{}\n")
    (root / "train" / "shard_00000.bin").write_bytes(b"TRAIN" * 10)
    (root / "val" / "shard_00000.bin").write_bytes(b"VALIDATION-SECRET" * 10)
    (root / "eval" / "scored.bin").write_bytes(b"EVAL-SECRET" * 10)
    return root


@pytest.fixture(scope="session")
def adversarial(images, test_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The adversarial night: every hostile train.py and agent refusal through the real loop, once."""
    from tests.adversarial.night import adversarial_night

    result = adversarial_night(tmp_path_factory.mktemp("adversarial"), test_data_dir)
    print(f"\nadversarial night: {len(result.rows)} experiments in {result.seconds:.0f}s")
    return result
