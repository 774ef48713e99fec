"""Replay: run a recorded experiment again from its commit and compare the scores.

The run is found by commit (prefix) in any tag; the replay refuses to run unless the evaluator
image and the data are the ones the run was recorded with (image id, data manifest hash). Under a
step budget (the profile's max_steps) training is deterministic on CPU and the scores must be
equal; under a time budget the difference is shown next to the noise measured for that tag (the
spread of the baseline's repeated runs)."""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller import git
from controller.ledger import Ledger, LedgerError, RunLocation, find_run
from controller.records import ReplayRecord, RunRecord, utcnow
from controller.safefiles import atomic_write_model
from controller.settings import Settings
from evaluator.profiles import get_profile
from sandbox.errors import SandboxError
from sandbox.result import ExperimentResult, ExperimentSpec

Runner = Callable[[ExperimentSpec], ExperimentResult]
REPLAY_JSON = "replay.json"


class ReplayError(RuntimeError):
    """The replay cannot run as asked; one line saying why and what to do."""


@dataclass(frozen=True)
class ReplayOutcome:
    location: RunLocation
    record: RunRecord
    replay: ReplayRecord
    step_budget: bool
    equal: bool | None  # under a step budget: did the scores match exactly
    noise: float | None  # std of the tag's baseline runs (time budget), None if not measured
    noise_runs: int
    baseline_commit: str  # short sha of the tag's baseline, to replay for a noise measurement

    @property
    def ok(self) -> bool:
        return self.equal is not False and self.replay.status == "ok"


def _manifest_sha(data_dir: Path) -> str:
    from evaluator.manifest import ManifestError, manifest_sha256

    try:
        return manifest_sha256(data_dir)
    except (ManifestError, OSError) as exc:
        raise ReplayError(f"cannot read the data manifest in {data_dir}: {exc}") from None


def locate(settings: Settings, sha: str) -> tuple[RunLocation, RunRecord]:
    try:
        loc = find_run(settings.runs_dir, sha)
    except LedgerError as exc:
        raise ReplayError(str(exc)) from None
    record = loc.record()
    if record is None:
        raise ReplayError(f"run {loc.tag} #{loc.n} ({loc.row.commit}) has no run.json: it cannot be replayed")
    return loc, record


def check_same_setup(
    settings: Settings, record: RunRecord, image_id: str | None, data_dir: Path, check_image: bool = True
) -> None:
    """Refuse a replay whose image or data differs from the recorded run's (check_image False:
    the caller runs with the very runner and image the record was made with, e.g. at a night's end)."""
    if check_image and record.image_id is not None and image_id != record.image_id:
        raise ReplayError(
            f"the evaluator image {settings.image} is {image_id or 'missing'}, but {record.commit[:7]} ran in "
            f"{record.image_id}: rebuild or retag that image to replay it"
        )
    current = _manifest_sha(data_dir)
    if record.data_manifest_sha256 is not None and current != record.data_manifest_sha256:
        raise ReplayError(
            f"the data in {data_dir} (manifest {current[:12]}) is not the data {record.commit[:7]} ran on "
            f"(manifest {record.data_manifest_sha256[:12]}): prepare that data or pass its --data-dir"
        )


def baseline_noise(tag_dir: Path) -> tuple[float | None, int]:
    """(std of the baseline's scores, how many runs): the original run and its replays."""
    ledger = Ledger(tag_dir)
    rows = ledger.rows()
    if not rows:
        return None, 0
    record0 = ledger.read_record(0, rows[0].commit)
    values = [record0.val_bpb] if record0 is not None and record0.val_bpb is not None else []
    for path in sorted((tag_dir / "replays").glob(f"*/{REPLAY_JSON}")):
        try:
            rep = ReplayRecord.model_validate_json(path.read_bytes())
        except ValueError:
            continue
        if rep.n == 0 and rep.replayed_val_bpb is not None:
            values.append(rep.replayed_val_bpb)
    return (statistics.stdev(values) if len(values) >= 2 else None), len(values)


def recorded_data_dir(settings: Settings, record: RunRecord) -> Path:
    """The data a re-run uses: --data-dir when given, else the data the run was recorded with."""
    return Path(
        settings.data_dir if "data_dir" in settings.model_fields_set or not record.data_dir else record.data_dir
    )


def prepare_rerun(
    settings: Settings, loc: RunLocation, record: RunRecord, image_id: str | None, check_image: bool = True
) -> tuple[Path, bytes]:
    """Check that the recorded run can run again here (same image and data, commit present);
    returns (data dir, its train.py)."""
    data_dir = recorded_data_dir(settings, record)
    check_same_setup(settings, record, image_id, data_dir, check_image)
    repo = git.repo_root(settings.repo)
    if git.resolve(repo, record.commit) is None:
        raise ReplayError(
            f"commit {record.commit[:7]} is not in this repository "
            f"(ref refs/autoresearch/{loc.tag}/{loc.n} was deleted?)"
        )
    return data_dir, git.file_at(repo, record.commit, f"programs/{record.program}/train.py")


def run_recorded(
    settings: Settings,
    loc: RunLocation,
    record: RunRecord,
    runner: Runner,
    image_id: str | None,
    data_dir: Path,
    source: bytes,
    seed: int,
    name: str,
    run_id: str,
    labels: dict[str, str] | None = None,
) -> ReplayRecord:
    """Run the recorded commit once more, in runs/<tag>/replays/<name>/, and write its replay.json
    (the loop pools these into the tag's noise). A runner that raises is this run's crash; the
    sandbox failing (SandboxError) is a ReplayError."""
    run_dir = (settings.runs_dir / loc.tag / "replays" / name).resolve()
    run_dir.mkdir(parents=True)
    started = utcnow()
    with tempfile.TemporaryDirectory(prefix="overnight-replay-") as tmp:
        train_py = Path(tmp) / "train.py"
        train_py.write_bytes(source)
        spec = ExperimentSpec(
            run_id=run_id,
            train_py=train_py,
            run_dir=run_dir,
            profile=record.profile,
            data_dir=data_dir.resolve(),
            image=settings.image,
            gpu=record.gpu,
            seed=seed,
            vram_cap_gb=settings.vram_cap_gb,
            memory_limit_gb=settings.container_memory_gb,
            labels={"overnight.replay-of": f"{loc.tag}-{loc.n}", **(labels or {})},
        )
        try:
            result = runner(spec)
        except SandboxError as exc:
            raise ReplayError(f"the sandbox failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - anything else is this run's crash, as in the loop
            result = ExperimentResult(
                status="crash", run_dir=run_dir, reason=f"the sandbox failed on this run ({type(exc).__name__})"
            )
    rep = ReplayRecord(
        tag=loc.tag,
        n=loc.n,
        commit=record.commit,
        image_id=result.image_id or image_id,
        data_manifest_sha256=record.data_manifest_sha256,
        profile=record.profile,
        seed=seed,
        status=result.status,
        reason=result.reason,
        recorded_val_bpb=record.val_bpb,
        replayed_val_bpb=result.val_bpb,
        started=started,
        finished=utcnow(),
        run_dir=run_dir,
    )
    atomic_write_model(run_dir / REPLAY_JSON, rep)
    return rep


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def replay(settings: Settings, sha: str, runner: Runner, image_id: str | None) -> ReplayOutcome:
    """Run the recorded commit `sha` again; `image_id` is the current id of settings.image (None
    when replaying with the bare runner)."""
    loc, record = locate(settings, sha)
    data_dir, source = prepare_rerun(settings, loc, record, image_id)
    stamp = _stamp()
    rep = run_recorded(
        settings,
        loc,
        record,
        runner,
        image_id,
        data_dir,
        source,
        seed=record.seed,
        name=f"{loc.n:04d}-{record.commit[:7]}-{stamp}",
        run_id=f"{loc.tag}-replay-{loc.n:04d}-{stamp}",
    )
    step_budget = get_profile(record.profile).max_steps is not None
    equal = (rep.replayed_val_bpb == rep.recorded_val_bpb) if step_budget else None
    noise, noise_runs = baseline_noise(settings.runs_dir / loc.tag)
    baseline = Ledger(settings.runs_dir / loc.tag).rows()[0].commit
    return ReplayOutcome(
        location=loc,
        record=record,
        replay=rep,
        step_budget=step_budget,
        equal=equal,
        noise=noise,
        noise_runs=noise_runs,
        baseline_commit=baseline,
    )


def describe(outcome: ReplayOutcome) -> list[str]:
    """The lines a person reads after a replay."""
    rec, rep, loc = outcome.record, outcome.replay, outcome.location

    def fmt(v: float | None) -> str:
        return f"{v:.6f}" if v is not None else "-"

    lines = [
        f"replay of {loc.tag} #{loc.n} {rec.commit[:7]} ({rec.description})",
        f"recorded  val_bpb {fmt(rep.recorded_val_bpb)}  ({rec.status})",
        f"replayed  val_bpb {fmt(rep.replayed_val_bpb)}  ({rep.status}{': ' + rep.reason if rep.reason else ''})",
    ]
    if outcome.step_budget:
        lines.append(
            "same score: the step budget makes the run deterministic"
            if outcome.equal
            else "DIFFERENT score under a step budget: this run did not reproduce"
        )
    elif rep.recorded_val_bpb is not None and rep.replayed_val_bpb is not None:
        diff = rep.replayed_val_bpb - rep.recorded_val_bpb
        if outcome.noise is not None:
            lines.append(
                f"difference {diff:+.6f}; noise of tag {loc.tag}: std {outcome.noise:.6f} over "
                f"{outcome.noise_runs} runs of its baseline (time budget: runs differ by design)"
            )
        else:
            lines.append(
                f"difference {diff:+.6f}; no noise measured for tag {loc.tag} yet: replay its baseline "
                f"a few times to measure it (make replay SHA={outcome.baseline_commit}); under a time "
                "budget runs differ by design"
            )
    lines.append(f"logs: {rep.run_dir}")
    return lines
