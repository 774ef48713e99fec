"""Where an experiment's time goes outside the timed training, on one GPU (or a tiny CPU version).

    python benchmarks/bench_gpu.py [--profile gpu|cpu|test] [--mode auto|docker|bare]
                                   [--budget-s S] [--compile auto|on] [--data-dir DIR] [--keep DIR]

`make bench-gpu`. Needs PyTorch (with Triton on a GPU) and this checkout; Docker is optional:
with an engine and the evaluator image, the jobs run as the sandbox runs them (the night's
warm-up job, then one experiment through sandbox.experiment with the warm compile cache); without
one, as plain processes the same way (sandbox/bare.py style: the cache folder is copied, not
unpacked). Nothing is downloaded: the data dir is prepared from this Python's standard library
(the `stdlib` dataset; its validation text repeated until the profile's eval rows fit), unless
--data-dir names a prepared one. Default profile: gpu with CUDA, else test (the tiny CPU version
that tests/test_bench_gpu.py runs, so this file cannot rot).

What runs is the seed train.py with timing lines added (`instrumented_seed`; --compile on also
turns torch.compile on where the seed leaves it off, i.e. on CPU), for a short budget (--budget-s;
60 s on gpu), then the evaluator on its model. The scoring breakdown (artifact load, scoring
forwards, probe forwards) is timed again in this process on the same model and device, on a
sample of the batches, and scaled to the profile's counts. Projections are for the profile's own
budget (gpu: 330 s), assuming train.py uses all of it.

Output: a table, then grep-able `name: value` lines, ending with `probe_share: 0.xx` (probe
forwards / scoring forwards, from score.json) and `overhead_s: N` (seconds per experiment
outside the timed training: start-up, compile, export, the eval job, the host's container work).
On one H100 the whole bench should take about 5-7 minutes (an estimate: no GPU was at hand).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluator import layout  # noqa: E402
from evaluator.datasets import stdlib_files  # noqa: E402
from evaluator.profiles import Profile, get_profile  # noqa: E402
from sandbox import specs  # noqa: E402
from sandbox.errors import SandboxError  # noqa: E402

if TYPE_CHECKING:
    from evaluator.datasets import TextSource

SEED = REPO / "programs" / "default" / "train.py"
GPU_BUDGET_S = 60.0  # the timed run on gpu: long enough for a steady tokens/s, short enough for 8 min
SCORING_SAMPLE = 16  # eval batches timed in-process (then scaled to the profile's count)
BYTES_PER_TOKEN = 8.0  # stdlib text packs ~5.5 bytes per token at the gpu vocab (measured): a margin
STEP_MARGIN = 1.5  # the seed stops this many step-times before its deadline (seed's STEP_MARGIN)
# Dense bf16 peak of the GPUs this is likely to meet, for MFU (name substring -> FLOP/s).
PEAK_BF16 = {
    "H200": 989e12,
    "GH200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "4090": 165e12,
}


# ---------------------------------------------------------------------------------------------
# The seed, with timing lines


def instrumented_seed(seed_text: str, force_compile: bool) -> str:
    """The seed with `bench_*` lines printed at its phase boundaries; with force_compile, the
    model is compiled on CPU too. Raises ValueError when the seed no longer has the lines this
    hooks into (so a changed seed breaks the bench loudly, never silently)."""
    edits = [
        (
            "t_schedule = time.time()  # the LR schedule runs from here",
            (
                "print(f\"bench_startup_s: {time.time() - DEADLINE + float(__import__('os').environ"
                "['OVERNIGHT_BUDGET_S']):.3f}\", flush=True)\n"
                "t_schedule = time.time()  # the LR schedule runs from here"
            ),
        ),
        (
            "        t_schedule = time.time()  # the first step compiles; the schedule starts after it\n",
            (
                "        t_schedule = time.time()  # the first step compiles; the schedule starts after it\n"
                '        print(f"bench_first_step_s: {dt:.3f}", flush=True)\n'
            ),
        ),
        (
            "\nsubmit(model)",
            (
                "\n_t_submit = time.time()\nsubmit(model)\n"
                'print(f"bench_export_s: {time.time() - _t_submit:.3f}", flush=True)'
            ),
        ),
    ]
    if force_compile:
        edits.append(("step_model = torch.compile(model) if CUDA else model", "step_model = torch.compile(model)"))
    text = seed_text
    for anchor, replacement in edits:
        if text.count(anchor) != 1:
            raise ValueError(f"the seed train.py no longer has the line the bench hooks into: {anchor.strip()!r}")
        text = text.replace(anchor, replacement)
    return text


@dataclass
class TrainLog:
    """What the instrumented seed printed."""

    startup_s: float = math.nan
    first_step_s: float = math.nan
    export_s: float = math.nan
    training_seconds: float = math.nan
    seconds_left: float = math.nan
    num_steps: int = 0
    peak_vram_mb: float = 0.0
    num_params_m: float = math.nan
    depth: int = 0
    width: int = 0
    tokens_per_step: int = 0
    device: str = ""

    @property
    def step_s(self) -> float:
        """Seconds per step after the first (which compiles)."""
        if self.num_steps < 2:
            return math.nan
        return (self.training_seconds - self.first_step_s) / (self.num_steps - 1)

    def compile_s(self, step_s: float) -> float:
        """What the first step costs over a steady one of `step_s`."""
        return max(0.0, self.first_step_s - (step_s if math.isfinite(step_s) else 0.0))

    @property
    def tokens_per_s(self) -> float:
        step = self.step_s
        return self.tokens_per_step / step if step and math.isfinite(step) else math.nan


_HEADER = re.compile(r"\| (\w+) \| [\d.]+M params \| depth (\d+) \| width (\d+) \| (\d+) x (\d+) x (\d+) tokens/step")


def parse_train_log(text: str) -> TrainLog:
    got = TrainLog()
    floats = {
        "bench_startup_s": "startup_s",
        "bench_first_step_s": "first_step_s",
        "bench_export_s": "export_s",
        "training_seconds": "training_seconds",
        "seconds_left": "seconds_left",
        "num_params_M": "num_params_m",
        "peak_vram_mb": "peak_vram_mb",
    }
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in floats:
            setattr(got, floats[key], float(value))
        elif key == "num_steps":
            got.num_steps = int(value)
        elif (m := _HEADER.search(line)) is not None:
            got.device, got.depth, got.width = m.group(1), int(m.group(2)), int(m.group(3))
            got.tokens_per_step = int(m.group(4)) * int(m.group(5)) * int(m.group(6))
    return got


def flops_per_token(log: TrainLog, profile: Profile) -> float:
    """Training FLOPs per token: 6 per matmul weight (the embedding lookup is not a matmul) plus
    attention, 12 * layers * width * seq_len (nanoGPT's estimate)."""
    matmul_params = log.num_params_m * 1e6 - profile.vocab_size * log.width
    return 6 * matmul_params + 12 * log.depth * log.width * profile.seq_len


def peak_flops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16.items() if name in device_name), None)


# ---------------------------------------------------------------------------------------------
# Data: prepared here from the standard library, enough validation text for the profile


def _texts(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def stdlib_text() -> TextSource:
    """This Python's standard library; where its test suite (the stdlib dataset's validation
    text) is not installed, every tenth file is validation instead (timing needs no more)."""
    from evaluator.datasets import DatasetError, TextSource, stdlib_source

    try:
        return stdlib_source()
    except DatasetError:
        root = Path(sysconfig.get_paths()["stdlib"])
        files, _ = stdlib_files(root)
        return TextSource(
            name="stdlib (no test suite: every tenth file is validation)",
            read_train=partial(_texts, [f for i, f in enumerate(files) if i % 10]),
            read_val=partial(_texts, files[::10]),
            facts={"root": str(root)},
        )


def prepare_data(profile: Profile, out: Path) -> Path:
    from evaluator.dataloader import spare_rows_needed
    from evaluator.datasets import TextSource
    from evaluator.prepare import prepare

    base = stdlib_text()
    val = list(base.read_val())
    have = sum(len(text.encode("utf-8", "surrogatepass")) for text in val)
    if profile.max_val_bytes is not None:
        have = min(have, profile.max_val_bytes)
    need = (profile.eval_rows + spare_rows_needed(profile)) * (profile.seq_len + 1) * BYTES_PER_TOKEN
    repeats = 1 if profile.max_val_bytes is not None else max(1, math.ceil(need / have))

    def read_val() -> Iterator[str]:
        return (text for _ in range(repeats) for text in val)

    source = TextSource(
        name=f"stdlib (validation text x{repeats}, for the bench)",
        read_train=base.read_train,
        read_val=read_val,
        facts=dict(base.facts, bench_val_repeats=repeats),
    )
    print(f"preparing {out} for profile {profile.name} from the stdlib (validation text x{repeats}) ...", flush=True)
    started = time.monotonic()
    prepare(profile, source, out)
    print(f"prepared in {time.monotonic() - started:.0f} s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Running: the night's warm-up, then one experiment, in containers or as plain processes


@dataclass
class Phase:
    """One experiment's measured facts, whichever way it ran."""

    warm: TrainLog
    train: TrainLog
    warm_job_s: float
    train_s: float
    eval_s: float
    host_s: float
    cache_bytes: int
    score: dict[str, Any]
    artifact: Path
    train_peak_ram_gb: float = math.nan
    eval_peak_ram_gb: float = math.nan
    notes: list[str] = field(default_factory=list)


def docker_ready(image: str, cuda: bool) -> str | None:
    """Why the jobs cannot run in containers here, or None when they can."""
    try:
        import docker

        if cuda:
            import pynvml  # noqa: F401  (the sandbox's VRAM watchdog)
    except ImportError as exc:
        return f"{exc.name} is not installed"
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        client.images.get(image)
    except Exception as exc:
        return f"no Docker engine or no image {image} ({type(exc).__name__})"
    return None


def run_in_docker(
    profile: Profile, budget_s: float, data_dir: Path, harness: Path, work: Path, image: str, gpu: int | None
) -> Phase:
    from sandbox.compile_cache import warm_compile_cache
    from sandbox.docker_runner import DockerRunner
    from sandbox.experiment import run_experiment
    from sandbox.limits import GiB, Limits
    from sandbox.result import ExperimentSpec
    from sandbox.runner import JobHandle, JobOutcome

    class Recording(DockerRunner):
        """The Docker runner, keeping each job's outcome (peak RAM included)."""

        def __init__(self) -> None:
            super().__init__()
            self.outcomes: dict[str, JobOutcome] = {}

        def wait(self, handle: JobHandle) -> JobOutcome:
            outcome = super().wait(handle)
            self.outcomes[handle.spec.role] = outcome
            return outcome

    runner = Recording()
    night = work / "night"
    tag = f"bench-{secrets.token_hex(3)}"
    labels = {specs.LABEL_TAG: tag}
    memory_gb = profile.memory_gb
    warm = warm_compile_cache(
        seed_train_py=harness,
        tag_dir=night,
        run_id=f"{tag}-warmup",
        profile=profile.name,
        data_dir=data_dir,
        image=image,
        gpu=gpu,
        memory_gb=memory_gb,
        labels=labels,
        runner=runner,
    )
    notes = [] if warm.status == "ok" else [f"no warm cache ({warm.status}: {warm.reason})"]
    warm_log = parse_train_log((night / "compile-cache-warmup" / "train.log").read_text(errors="replace"))
    spec = ExperimentSpec(
        run_id=f"{tag}-0001",
        train_py=harness,
        run_dir=work / "run",
        profile=profile.name,
        data_dir=data_dir,
        image=image,
        gpu=gpu,
        memory_limit_gb=memory_gb,
        labels=labels,
        compile_cache=warm.path,
    )
    started = time.monotonic()
    result = run_experiment(spec, limits=Limits.for_profile(profile, train_budget_s=budget_s), runner=runner)
    wall = time.monotonic() - started
    if result.status != "ok" or result.score is None:
        raise SystemExit(f"error: the experiment ended {result.status}: {result.reason} (logs in {spec.run_dir})")
    outcomes = runner.outcomes
    return Phase(
        warm=warm_log,
        train=parse_train_log((spec.run_dir / "train.log").read_text(errors="replace")),
        warm_job_s=warm.seconds,
        train_s=result.train_seconds,
        eval_s=result.eval_seconds,
        host_s=wall - result.train_seconds - result.eval_seconds,
        cache_bytes=warm.bytes,
        score=result.score.model_dump(),
        artifact=spec.run_dir / layout.ARTIFACT_NAME,
        train_peak_ram_gb=outcomes["train"].peak_memory_bytes / GiB if "train" in outcomes else math.nan,
        eval_peak_ram_gb=outcomes["eval"].peak_memory_bytes / GiB if "eval" in outcomes else math.nan,
        notes=notes,
    )


def _process(cmd: list[str], env: dict[str, str], log: Path, cap_s: float) -> tuple[int | None, float, float]:
    """A process group with its output to `log`, killed at cap_s: (exit code or None, seconds, peak GB)."""
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status), time.monotonic() - started, usage.ru_maxrss / 2**20
            if time.monotonic() - started > cap_s:
                os.killpg(proc.pid, signal.SIGKILL)
                _, _, usage = os.wait4(proc.pid, 0)
                return None, time.monotonic() - started, usage.ru_maxrss / 2**20
            time.sleep(0.05)


def _bare_env(profile: Profile, data_dir: Path, out: Path, tmp: Path, budget_s: float) -> dict[str, str]:
    """As sandbox.bare gives train.py, plus a private TMPDIR holding the compile cache, where the
    train job has its tmpfs."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp)),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(tmp),
        "OVERNIGHT_PROFILE": profile.name,
        "OVERNIGHT_DATA_DIR": str(data_dir.resolve()),
        "OVERNIGHT_OUT_DIR": str(out),
        "OVERNIGHT_SEED": "0",
        "OVERNIGHT_BUDGET_S": f"{budget_s:g}",
        "OVERNIGHT_STARTED": f"{time.time():.3f}",
        **specs.compile_cache_environment(str(tmp / Path(specs.COMPILE_CACHE_DIR).name)),
    }
    for name in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def run_bare(profile: Profile, budget_s: float, data_dir: Path, harness: Path, work: Path, device: str) -> Phase:
    cache_name = Path(specs.COMPILE_CACHE_DIR).name
    jobs = {name: work / name for name in ("warmup", "run")}
    for folder in jobs.values():
        (folder / "tmp").mkdir(parents=True)
        (folder / "out").mkdir()
    warm_dir = jobs["warmup"]
    env = _bare_env(profile, data_dir, warm_dir / "out", warm_dir / "tmp", specs.WARMUP_BUDGET_S)
    code, warm_s, _ = _process(
        [sys.executable, str(harness)], env, warm_dir / "train.log", max(profile.train_cap_s, specs.WARMUP_MIN_CAP_S)
    )
    if code != 0:
        raise SystemExit(f"error: the warm-up run failed (exit {code}); see {warm_dir / 'train.log'}")
    cache = warm_dir / "tmp" / cache_name
    notes = []
    if cache.is_dir():
        shutil.copytree(cache, jobs["run"] / "tmp" / cache_name, symlinks=True)
    else:
        notes.append("no warm cache (the seed compiled nothing)")
    run = jobs["run"]
    env = _bare_env(profile, data_dir, run / "out", run / "tmp", budget_s)
    started = time.monotonic()
    code, train_s, train_gb = _process(
        [sys.executable, str(harness)], env, run / "train.log", budget_s + profile.export_allowance_s
    )
    artifact = run / "out" / layout.ARTIFACT_NAME
    if code != 0 or not artifact.is_file():
        raise SystemExit(f"error: the timed run failed (exit {code}); see {run / 'train.log'}")
    score_json = run / "score" / layout.SCORE_NAME
    score_json.parent.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "evaluator.score",
        "--artifact",
        str(artifact),
        "--data-dir",
        str(data_dir),
        "--profile",
        profile.name,
        "--out",
        str(score_json),
        "--device",
        device,
    ]
    code, eval_s, eval_gb = _process(cmd, env, run / "eval.log", profile.eval_timeout_s)
    if code != 0:
        raise SystemExit(
            f"error: the evaluator ended with exit {code}; see {run / 'eval.log'} and "
            f"{score_json.parent / 'detail.log'}"
        )
    wall = time.monotonic() - started
    return Phase(
        warm=parse_train_log((warm_dir / "train.log").read_text(errors="replace")),
        train=parse_train_log((run / "train.log").read_text(errors="replace")),
        warm_job_s=warm_s,
        train_s=train_s,
        eval_s=eval_s,
        host_s=wall - train_s - eval_s,
        cache_bytes=sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0,
        score=json.loads(score_json.read_text()),
        artifact=artifact,
        train_peak_ram_gb=train_gb,
        eval_peak_ram_gb=eval_gb,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# The scoring, taken apart in this process


@dataclass(frozen=True)
class ScoringTimes:
    load_s: float
    per_batch_s: float  # one scoring forward with its cross-entropy
    per_probe_s: float  # one probe forward with its comparison
    sampled: int


def time_scoring(artifact: Path, data_dir: Path, profile: Profile, device: str) -> ScoringTimes:
    import torch

    from evaluator.artifact import load_artifact
    from evaluator.dataloader import eval_data
    from evaluator.probe import Probe, ProbeConfig
    from evaluator.score import (
        checked_forward,
        eval_tensors,
        row_totals,
        token_byte_table,
    )
    from evaluator.tokenizer import load_token_bytes

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as evaluator.score runs
    torch.use_deterministic_algorithms(True, warn_only=True)
    B, T, V = profile.eval_batch_size, profile.seq_len, profile.vocab_size

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    model = load_artifact(artifact, B, T, device=device)
    sync()
    load_s = time.perf_counter() - started
    raw = eval_data(data_dir, profile)
    data = eval_tensors(raw.inputs, raw.targets, raw.spare, profile)
    table = token_byte_table(load_token_bytes(data_dir), V)
    forward = checked_forward(model, device, B, T, V)
    sampled = min(SCORING_SAMPLE, profile.eval_batches)
    config = ProbeConfig.for_profile(profile)
    per_base = max(1, math.ceil(config.forwards / config.batches))
    with torch.inference_mode():
        started = time.perf_counter()
        for b in range(sampled):
            logits = forward(data.inputs[b])
            row_totals(logits, data.targets[b], table)
        sync()
        per_batch = (time.perf_counter() - started) / sampled
        base = forward(data.inputs[0])  # the probe's base is a scoring forward: not the probe's cost
        probe = Probe(
            forward, data.inputs[:1], data.spare, ProbeConfig(forwards=per_base, batches=1, tolerance=config.tolerance)
        )
        sync()
        started = time.perf_counter()
        probe.check(0, base)
        sync()
        per_probe = (time.perf_counter() - started) / max(1, probe.checks)
    return ScoringTimes(load_s=load_s, per_batch_s=per_batch, per_probe_s=per_probe, sampled=sampled)


# ---------------------------------------------------------------------------------------------
# The report


def report(
    profile: Profile, phase: Phase, scoring: ScoringTimes, mode: str, device_name: str, budget_s: float
) -> list[str]:
    """The table, then the grep-able lines."""
    t, w = phase.train, phase.warm
    probe = phase.score.get("probe") or {}
    checks = int(probe.get("checks", 0))
    forwards = int(phase.score.get("forwards", 0))
    scoring_forwards = forwards - checks
    probe_share = checks / scoring_forwards if scoring_forwards else math.nan
    scoring_s = scoring.per_batch_s * scoring_forwards
    probe_s = scoring.per_probe_s * checks
    eval_rest = phase.eval_s - scoring.load_s - scoring_s - probe_s
    tok_s = t.tokens_per_s
    peak = peak_flops(device_name)
    mfu = tok_s * flops_per_token(t, profile) / peak if peak and math.isfinite(tok_s) else math.nan
    slack = min(max(t.seconds_left, 0.0), STEP_MARGIN * t.step_s) if math.isfinite(t.step_s) else 0.0
    overhead = t.startup_s + t.compile_s(t.step_s) + t.export_s + phase.eval_s + phase.host_s + slack
    per_experiment = profile.time_budget_s + t.export_s + phase.eval_s + phase.host_s
    per_hour = 3600 / per_experiment

    def row(name: str, value: float | str, note: str = "") -> str:
        shown = value if isinstance(value, str) else ("-" if not math.isfinite(value) else f"{value:8.1f}")
        return f"  {name:34s} {shown:>8s}  {note}"

    mb = phase.cache_bytes / 1e6
    lines = [
        (
            f"bench-gpu: profile {profile.name} on {device_name} ({mode}), timed run of {budget_s:g} s "
            f"(the profile's budget: {profile.time_budget_s:g} s)"
        ),
        *(f"  note: {note}" for note in phase.notes),
        "  phase                                seconds  note",
        row("train start-up", t.startup_s, "container start -> first step (imports, data, model)"),
        row(
            "compile, cold",
            w.compile_s(t.step_s),
            f"first step {w.first_step_s:.1f} s; the night's warm-up job ({phase.warm_job_s:.0f} s in all)",
        ),
        row("compile, warm", t.compile_s(t.step_s), f"first step {t.first_step_s:.1f} s, with the cache ({mb:.0f} MB)"),
        row(
            "training steps",
            f"{t.num_steps:8d}",
            f"{t.step_s:.3f} s/step, {tok_s:,.0f} tokens/s, MFU "
            + (f"{100 * mfu:.1f}%" if math.isfinite(mfu) else "- (no peak known)"),
        ),
        row("export (submit)", t.export_s),
        row("eval job", phase.eval_s, "wall clock of the eval container / process"),
        row("  artifact load", scoring.load_s),
        row(
            f"  scoring ({scoring_forwards} forwards)",
            scoring_s,
            f"{scoring.per_batch_s * 1e3:.1f} ms each (timed on {scoring.sampled})",
        ),
        row(f"  probe ({checks} forwards)", probe_s, f"{scoring.per_probe_s * 1e3:.1f} ms each"),
        row("  start-up, eval data, the rest", eval_rest),
        row("host (containers, copies)", phase.host_s, "experiment wall minus both jobs"),
        row(
            "per experiment at the budget",
            per_experiment,
            f"{profile.time_budget_s:g} + export + eval + host -> {per_hour:.1f} experiments/hour",
        ),
        "---",
        f"profile: {profile.name}",
        f"mode: {mode}",
        f"device: {device_name}",
        f"startup_s: {t.startup_s:.1f}",
        f"compile_cold_s: {w.compile_s(t.step_s):.1f}",
        f"compile_warm_s: {t.compile_s(t.step_s):.1f}",
        f"compile_cache_mb: {mb:.0f}",
        f"steps: {t.num_steps}",
        f"step_s: {t.step_s:.4f}",
        f"tokens_per_s: {tok_s:.0f}",
        f"mfu: {mfu:.3f}" if math.isfinite(mfu) else "mfu: -",
        f"export_s: {t.export_s:.1f}",
        f"artifact_load_s: {scoring.load_s:.2f}",
        f"scoring_s: {scoring_s:.1f}",
        f"probe_s: {probe_s:.1f}",
        f"eval_s: {phase.eval_s:.1f}",
        f"host_s: {phase.host_s:.1f}",
        f"train_peak_vram_gb: {t.peak_vram_mb / 1024:.2f}",
        f"train_peak_ram_gb: {phase.train_peak_ram_gb:.2f}",
        f"eval_peak_ram_gb: {phase.eval_peak_ram_gb:.2f}",
        f"val_bpb: {phase.score.get('val_bpb')}",
        f"forwards: {forwards}",
        f"probe_forwards: {checks}",
        f"experiments_per_hour: {per_hour:.1f}",
        f"probe_share: {probe_share:.2f}",
        f"overhead_s: {overhead:.0f}",
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--profile", default=None, help="default: gpu with CUDA, else test")
    parser.add_argument(
        "--mode",
        choices=["auto", "docker", "bare"],
        default="auto",
        help="auto: containers when an engine and the image are there, else processes",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"the timed run's budget (default: {GPU_BUDGET_S:g} s on gpu, else the profile's)",
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "on"],
        default="auto",
        help="on: torch.compile on CPU too (the seed compiles on CUDA only)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="a prepared data dir (default: made here)")
    parser.add_argument("--image", default=specs.DEFAULT_IMAGE)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here (default: removed)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: the bench needs PyTorch: make setup (or pip install torch)", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    profile = get_profile(args.profile or ("gpu" if cuda else "test"))
    if profile.name == "gpu" and not cuda:
        print(
            "error: profile gpu needs CUDA, and torch sees none here: run without --profile for the tiny CPU version",
            file=sys.stderr,
        )
        return 2
    device, device_name = ("cuda", torch.cuda.get_device_name(0)) if cuda else ("cpu", f"CPU ({os.cpu_count()} cores)")
    budget_s = args.budget_s or (min(GPU_BUDGET_S, profile.time_budget_s) if cuda else profile.time_budget_s)
    why_not_docker = docker_ready(args.image, cuda) if args.mode != "bare" else "--mode bare"
    if args.mode == "docker" and why_not_docker:
        print(f"error: cannot run in containers: {why_not_docker} (make images, or --mode bare)", file=sys.stderr)
        return 2
    mode = "bare" if why_not_docker else "docker"
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the containers' user reads the harness and data from here
    started = time.monotonic()
    try:
        data_dir = (args.data_dir or prepare_data(profile, work / "data")).resolve()
        harness = work / "train.py"
        harness.write_text(instrumented_seed(SEED.read_text(), force_compile=args.compile == "on"))
        harness.chmod(0o644)
        print(
            f"running in {mode}"
            + (f" ({why_not_docker})" if why_not_docker and args.mode == "auto" else "")
            + f": the warm-up job, then one experiment of {budget_s:g} s ...",
            flush=True,
        )
        try:
            if mode == "docker":
                phase = run_in_docker(profile, budget_s, data_dir, harness, work, args.image, 0 if cuda else None)
            else:
                phase = run_bare(profile, budget_s, data_dir, harness, work, device)
        except SandboxError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        scoring = time_scoring(phase.artifact, data_dir, profile, device)
        for line in report(profile, phase, scoring, mode, device_name, budget_s):
            print(line)
        print(f"bench_wall_s: {time.monotonic() - started:.0f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
