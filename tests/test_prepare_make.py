"""`make prepare DATASET=parquet:... VAL=parquet:...`: your own text, and a private validation set,
read from this machine by the one-off prepare job (the real compose job, the real engine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sandbox_support import host_venv

from evaluator.manifest import read_manifest, verify_manifest

try:
    from hub_server import synthetic_texts, write_parquet
except ImportError:  # tests/ imported as a package
    from tests.hub_server import synthetic_texts, write_parquet

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def make_prepare(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}
    env["OVERNIGHT_DATA_ROOT"] = str(tmp_path / "data")
    return subprocess.run(
        ["make", "--no-print-directory", "prepare", "PROFILE=test", f"VENV={host_venv(tmp_path / 'venv')}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("setting", "folder"),
    [
        ("DATASET", "{tmp}/nowhere"),
        ("VAL", "{tmp}/nowhere"),
        ("VAL", "{tmp}/pri*"),
    ],
)
def test_a_parquet_folder_that_is_not_there_is_a_clear_error_before_anything_runs(
    tmp_path: Path, setting: str, folder: str
) -> None:
    (tmp_path / "private").mkdir()
    folder = folder.format(tmp=tmp_path)
    started = time.monotonic()
    done = make_prepare(tmp_path, f"{setting}=parquet:{folder}/*.parquet", timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - started < 10  # no image build, no container
    wanted = f"{setting}=parquet:<folder>/<pattern>, a folder without wildcards"
    assert f"make prepare: {folder} is not a folder here ({wanted})" in done.stderr
    assert "build.py" not in done.stdout
    assert not (tmp_path / "data").exists()


def test_a_dataset_and_a_private_validation_set_from_this_machine(images, tmp_path: Path) -> None:
    train = [t for s in range(3) for t in synthetic_texts(seed=s, count=300)]
    private = synthetic_texts(seed=9, count=300)
    write_parquet(tmp_path / "corpus" / "part-0.parquet", train[:450])
    write_parquet(tmp_path / "corpus" / "part-1.parquet", train[450:])
    write_parquet(tmp_path / "mine" / "val.parquet", private)

    done = make_prepare(
        tmp_path,
        f"DATASET=parquet:{tmp_path}/corpus/part-*.parquet",
        f"VAL=parquet:{tmp_path}/mine/*.parquet",
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out = tmp_path / "data" / "test"
    manifest = read_manifest(out)
    assert manifest.dataset.startswith("parquet:/in/dataset/part-*.parquet+val:")
    assert manifest.source["val_rule"] == "every document of the private validation files"
    verify_manifest(out, ["train", "val", "eval"])
    # the job read the folders only: nothing was written next to the user's files
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["part-0.parquet", "part-1.parquet"]
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["val.parquet"]
