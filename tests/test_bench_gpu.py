"""`make bench-gpu`'s tiny CPU version runs end to end (the same path as on a GPU: the warm-up run,
one experiment, the evaluator, the scoring taken apart), so the GPU bench cannot rot unseen, and
its grep-able lines agree with the score.json it measured."""

from __future__ import annotations

import json
import math
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_gpu import SEED, instrumented_seed, parse_train_log
from evaluator.probe import ProbeConfig
from evaluator.profiles import get_profile

REPO = Path(__file__).resolve().parent.parent
TEST = get_profile("test")


def _lines(out: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith(" "))


def test_the_instrumented_seed_is_the_seed_plus_timing_lines(tmp_path: Path) -> None:
    seed = SEED.read_text()
    for force in (False, True):
        text = instrumented_seed(seed, force_compile=force)
        path = tmp_path / f"train_{force}.py"
        path.write_text(text)
        py_compile.compile(str(path), doraise=True)
        assert all(f"{name}: " in text for name in ("bench_startup_s", "bench_first_step_s", "bench_export_s"))
        kept = [line for line in text.splitlines() if "bench_" not in line and "_t_submit" not in line]
        assert [line for line in seed.splitlines() if line != "submit(model)"] == [
            line.replace("torch.compile(model)", "torch.compile(model) if CUDA else model") if force else line
            for line in kept
            if line != "submit(model)"
        ]
        assert ("step_model = torch.compile(model)\n" in text) is force
        assert text.splitlines().count("submit(model)") == 1


def test_a_seed_without_the_lines_the_bench_hooks_into_is_a_clear_error() -> None:
    changed = SEED.read_text().replace("submit(model)", "submit(net)")
    with pytest.raises(ValueError, match="no longer has the line"):
        instrumented_seed(changed, force_compile=False)


def test_the_train_log_is_read_into_phases() -> None:
    log = parse_train_log(
        "\n".join(
            [
                "profile gpu | cuda | 50.33M params | depth 8 | width 512 | 4 x 32 x 2048 tokens/step "
                "| budget 58s left",
                "bench_startup_s: 2.5",
                "bench_first_step_s: 40.0",
                "training_seconds: 49.0",
                "num_steps: 10",
                "num_params_M: 50.33",
                "depth: 8",
                "bench_export_s: 6.0",
                "seconds_left: 0.4",
            ]
        )
    )
    assert (log.device, log.depth, log.width, log.tokens_per_step) == ("cuda", 8, 512, 4 * 32 * 2048)
    assert log.step_s == pytest.approx(1.0) and log.compile_s(log.step_s) == pytest.approx(39.0)
    assert log.tokens_per_s == pytest.approx(4 * 32 * 2048)


@pytest.mark.slow  # a whole tiny experiment with a cold and a warm compile (1-2 minutes)
def test_the_tiny_cpu_bench_prints_its_table_and_lines_that_match_its_score(
    test_data_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_gpu.py"),
            "--mode",
            "bare",
            "--profile",
            "test",
            "--data-dir",
            str(test_data_dir),
            "--keep",
            str(work),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = _lines(done.stdout)
    score = json.loads((work / "run" / "score" / "score.json").read_text())
    checks, forwards = score["probe"]["checks"], score["forwards"]
    assert (int(lines["forwards"]), int(lines["probe_forwards"])) == (forwards, checks)
    assert forwards - checks == TEST.eval_batches and checks == ProbeConfig.for_profile(TEST).forwards
    assert float(lines["probe_share"]) == pytest.approx(checks / (forwards - checks), abs=0.005)
    assert float(lines["val_bpb"]) == pytest.approx(score["val_bpb"])
    overhead = float(lines["overhead_s"])
    parts = [float(lines[k]) for k in ("startup_s", "compile_warm_s", "export_s", "eval_s", "host_s")]
    assert all(math.isfinite(p) and p >= 0 for p in parts) and float(lines["eval_s"]) > 0
    assert sum(parts) - 1 <= overhead <= sum(parts) + float(lines["step_s"]) * 1.5 + 1
    per_experiment = TEST.time_budget_s + float(lines["export_s"]) + float(lines["eval_s"]) + float(lines["host_s"])
    assert float(lines["experiments_per_hour"]) == pytest.approx(3600 / per_experiment, rel=0.01)  # rounded parts
    assert "train start-up" in done.stdout and "probe (" in done.stdout  # the table for people
