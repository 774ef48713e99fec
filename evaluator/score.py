"""Score a run's model artifact: `python -m evaluator.score --artifact PATH --data-dir DIR
--profile NAME --out PATH [--device cpu|cuda]`.

Runs no code a run wrote: the artifact is read by `evaluator.artifact` (no pickle, ops from an
allowlist, no mutation), probed for causality on real validation text (`evaluator.probe`), and
the cross-entropy is computed here from the logits, in float32, over the profile's fixed eval
tokens. Targets whose token is 0 bytes long (BOS) count in neither the nats nor the bytes.

    val_bpb = total_nats / (ln 2 * total_bytes)

Order: the artifact is loaded and checked first (static: no validation data involved, so a
refusal may name what it refused), then the private eval rows are loaded and the model runs on
them; from then on a refusal is a fixed category with fixed text (evaluator.records).

Output: the container's stdout/stderr (the run's eval.log, which the agent can read) gets only
fixed lines: the score, or the category of a refusal, or a setup error from before the model
ran. Everything else (warnings, tracebacks, exception messages, which may hold values computed
from validation tokens) goes to `detail.log` next to score.json, which the host keeps where no
agent tool reads it.

Exit codes: 0 scored (score.json status "ok"), 3 rejected (score.json status "rejected" with a
reason), 2 bad setup (missing data, manifest mismatch, bad arguments: one line on stderr, no
score.json), 4 an unexpected error in the evaluator (fixed line; the trace in detail.log).
score.json is written atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from evaluator.artifact import (
    DEFAULT_LIMITS,
    ArtifactLimits,
    ArtifactRejected,
    LoadedModel,
    ModelOutputError,
    load_artifact,
)
from evaluator.exitcodes import EXIT_INTERNAL, EXIT_OK, EXIT_REJECTED, EXIT_SETUP
from evaluator.probe import Probe, ProbeConfig
from evaluator.profiles import Profile, UnknownProfileError, get_profile
from evaluator.records import REJECT_TEXT, RejectCode, ScoreRecord
from evaluator.rowloss import ROWLOSS_FILE, RowLosses, row_totals, write_rowloss

SCORE_SEED = 0
DETAIL_NAME = "detail.log"


class ModelRejected(Exception):
    """The model failed after it ran on validation tokens: a fixed category (records.REJECT_TEXT)."""

    def __init__(self, code: RejectCode) -> None:
        super().__init__(REJECT_TEXT[code])
        self.code = code


class SetupError(Exception):
    """The evaluator's own inputs are wrong (not the model's fault); one line for a person."""


# ---------------------------------------------------------------------------------------------
# Cross-entropy


@dataclass
class Totals:
    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, other: Totals) -> None:
        self.nats += other.nats
        self.tokens += other.tokens
        self.bytes += other.bytes

    @property
    def bpb(self) -> float:
        return self.nats / (math.log(2) * self.bytes)

    @property
    def loss(self) -> float:
        return self.nats / self.tokens


def cross_entropy_totals(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> Totals:
    """Nats, scored tokens and bytes of one batch; targets of byte length 0 are left out."""
    rows = row_totals(logits, targets, token_bytes)
    return Totals(nats=float(rows.nats.sum()), tokens=int(rows.tokens.sum()), bytes=int(rows.bytes.sum()))


def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    token_bytes: torch.Tensor,
    probe: Probe | None = None,
) -> RowLosses:
    """Every eval batch once; a probe base batch's scoring forward is also the probe's base."""
    parts = []
    for b in range(inputs.shape[0]):
        logits = forward(inputs[b])
        parts.append(row_totals(logits, targets[b], token_bytes))
        if probe is not None and probe.wants(b):
            probe.check(b, logits)
            if probe.failed:
                raise ModelRejected("non_causal")
    return RowLosses.concat(parts)


# ---------------------------------------------------------------------------------------------
# Running the model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def checked_forward(
    model: Callable[[torch.Tensor], torch.Tensor], device: str, batch_size: int, seq_len: int, vocab_size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens -> logits on `device`, refusing anything but finite float (B, T, vocab) logits.
    A failure is a fixed category; its details (which may hold token values) go to the detail
    log only."""
    want = (batch_size, seq_len, vocab_size)

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        try:
            logits = model(tokens.to(device))
        except ModelOutputError:
            traceback.print_exc()
            raise ModelRejected("bad_logits") from None
        except Exception:
            traceback.print_exc()  # to the detail log: the message may hold token values
            raise ModelRejected("model_error") from None
        if (
            not isinstance(logits, torch.Tensor)
            or not logits.is_floating_point()
            or tuple(logits.shape) != want
            or not bool(torch.isfinite(logits).all())
        ):
            raise ModelRejected("bad_logits")
        return logits

    return forward


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class EvalTensors:
    inputs: torch.Tensor  # (n_batches, B, T) int64
    targets: torch.Tensor  # (n_batches, B, T) int64
    spare: torch.Tensor  # (k, B, T) int64


def eval_tensors(inputs: object, targets: object, spare: object, profile: Profile) -> EvalTensors:
    """Check the eval set against the profile: exactly profile.eval_tokens targets, ids in range."""
    shape = (profile.eval_batches, profile.eval_batch_size, profile.seq_len)
    tensors = [torch.as_tensor(np.asarray(a)).to(torch.int64) for a in (inputs, targets, spare)]
    x, y, s = tensors
    if tuple(x.shape) != shape or tuple(y.shape) != shape:
        raise SetupError(
            f"eval data has shape {tuple(x.shape)}/{tuple(y.shape)}, profile {profile.name!r} needs {shape}"
        )
    if x.numel() != profile.eval_tokens:
        raise SetupError(f"profile {profile.name!r}: eval_tokens is not a whole number of eval batches")
    if s.ndim != 3 or tuple(s.shape[1:]) != shape[1:]:
        raise SetupError(f"spare probe rows have shape {tuple(s.shape)}, expected (k, {shape[1]}, {shape[2]})")
    for name, t in (("inputs", x), ("targets", y), ("spare rows", s)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= profile.vocab_size):
            raise SetupError(f"eval {name} hold token ids outside the vocabulary of {profile.vocab_size}")
    return EvalTensors(inputs=x, targets=y, spare=s)


def token_byte_table(token_bytes: object, vocab_size: int) -> torch.Tensor:
    table = torch.as_tensor(np.asarray(token_bytes)).to(torch.int64)
    if table.ndim != 1 or table.numel() != vocab_size or bool((table < 0).any()):
        raise SetupError(f"the token byte table has {table.numel()} entries, the profile's vocabulary {vocab_size}")
    return table


# ---------------------------------------------------------------------------------------------
# Scoring


def score_model(
    artifact: Path,
    data: EvalTensors | Callable[[], EvalTensors],
    token_bytes: torch.Tensor,
    profile: Profile,
    device: str = "cpu",
    probe_config: ProbeConfig | None = None,
    limits: ArtifactLimits = DEFAULT_LIMITS,
    rng: np.random.Generator | None = None,
    manifest_sha256: str | None = None,
) -> tuple[ScoreRecord, RowLosses | None]:
    """Load and check the artifact, then probe and score it on the eval rows. Returns the record
    (a refusal is status "rejected") and, when scored, the per-row totals.

    `data` may be a callable: the eval rows are then loaded only after the artifact passed its
    static checks, so nothing computed from validation data exists while those run."""
    started = time.perf_counter()
    torch.manual_seed(SCORE_SEED)
    sha256: str | None = None
    B, T, V = profile.eval_batch_size, profile.seq_len, profile.vocab_size
    config = probe_config or ProbeConfig.for_profile(profile)
    facts: dict[str, Any] = dict(profile=profile.name, manifest_sha256=manifest_sha256)
    try:
        model: LoadedModel = load_artifact(artifact, B, T, device=device, limits=limits)
    except ArtifactRejected as e:
        return ScoreRecord(
            status="rejected",
            reason_code=e.code,
            reason=e.reason,
            eval_seconds=time.perf_counter() - started,
            artifact_sha256=e.sha256,
            **facts,
        ), None
    sha256 = model.sha256
    tensors = data() if callable(data) else data
    forward = checked_forward(model, device, B, T, V)
    probe = Probe(forward, tensors.inputs, tensors.spare, config, rng)
    try:
        with torch.inference_mode():
            rows = evaluate(forward, tensors.inputs, tensors.targets, token_bytes, probe)
    except ModelRejected as e:
        return ScoreRecord(
            status="rejected",
            reason_code=e.code,
            reason=REJECT_TEXT[e.code],
            probe=probe.result(),
            forwards=tensors.inputs.shape[0] + probe.checks,
            eval_seconds=time.perf_counter() - started,
            artifact_sha256=sha256,
            **facts,
        ), None
    totals = Totals(nats=float(rows.nats.sum()), tokens=int(rows.tokens.sum()), bytes=int(rows.bytes.sum()))
    if totals.bytes == 0 or totals.tokens == 0:
        raise SetupError("the eval set has no scored bytes")
    return ScoreRecord(
        status="ok",
        val_bpb=totals.bpb,
        val_loss_nats=totals.loss,
        tokens=totals.tokens,
        bytes=totals.bytes,
        probe=probe.result(),
        forwards=tensors.inputs.shape[0] + probe.checks,
        eval_seconds=time.perf_counter() - started,
        artifact_sha256=sha256,
        **facts,
    ), rows


def write_score(record: ScoreRecord, out: Path) -> None:
    """Write score.json atomically: a temp file in the same folder, then rename over."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(record.model_dump_json(indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluator.score", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="the run's model.pt2")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared data dir (tokenizer + eval rows)")
    parser.add_argument("--profile", required=True, help="profile name: gpu, cpu or test")
    parser.add_argument("--out", type=Path, required=True, help="where to write score.json (detail.log goes beside it)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--probe-batches",
        type=int,
        default=ProbeConfig.batches,
        help="eval batches whose scoring forwards are the probe's bases",
    )
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Setup:
    profile: Profile
    token_bytes: torch.Tensor
    manifest_sha256: str
    data_dir: Path

    def eval_tensors(self) -> EvalTensors:
        from evaluator.dataloader import eval_data

        try:
            raw = eval_data(self.data_dir, self.profile)
        except (ValueError, OSError) as e:
            raise SetupError(_first_line(e)) from None
        return eval_tensors(raw.inputs, raw.targets, raw.spare, self.profile)


def _load_setup(args: argparse.Namespace) -> Setup:
    from evaluator import layout
    from evaluator.manifest import verify_manifest
    from evaluator.tokenizer import load_token_bytes

    try:
        profile = get_profile(args.profile)
    except UnknownProfileError as e:
        raise SetupError(str(e)) from None
    if not args.out.parent.is_dir():
        raise SetupError(f"the score folder {args.out.parent} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SetupError(
            "--device cuda was asked for but no CUDA device is visible in the eval "
            "container: check the NVIDIA container toolkit (make doctor)"
        )
    if args.probe_batches < 1:
        raise SetupError("--probe-batches must be >= 1")
    if not args.data_dir.is_dir():
        raise SetupError(f"data dir {args.data_dir} does not exist: run make prepare")
    try:
        manifest_sha = verify_manifest(args.data_dir, [layout.EVAL_DIR])
        token_bytes = token_byte_table(load_token_bytes(args.data_dir), profile.vocab_size)
    except SetupError:
        raise
    except (ValueError, OSError) as e:  # ManifestError, TokenizerError are ValueErrors
        raise SetupError(_first_line(e)) from None
    return Setup(profile=profile, token_bytes=token_bytes, manifest_sha256=manifest_sha, data_dir=args.data_dir)


def _summary(record: ScoreRecord) -> list[str]:
    """The fixed lines eval.log gets (the agent can read it)."""
    if record.status == "ok":
        assert record.val_bpb is not None and record.val_loss_nats is not None
        return [
            f"val_bpb: {record.val_bpb:.6f}",
            f"val_loss_nats: {record.val_loss_nats:.6f}",
            f"tokens: {record.tokens}",
            f"bytes: {record.bytes}",
            f"probe_positions: {record.probe.positions if record.probe else 0}",
            f"forwards: {record.forwards}",
        ]
    return [f"rejected: {record.reason}"]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with _private_output(args.out.parent / DETAIL_NAME) as (out, err):
        return _main(args, out, err)


def _main(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        setup = _load_setup(args)
        record, rows = score_model(
            args.artifact,
            setup.eval_tensors,
            setup.token_bytes,
            setup.profile,
            device=args.device,
            probe_config=ProbeConfig.for_profile(setup.profile, args.probe_batches),
            manifest_sha256=setup.manifest_sha256,
        )
        if rows is not None:  # before score.json: a run is compared paired, row by row
            write_rowloss(rows, args.out.parent / ROWLOSS_FILE)
        write_score(record, args.out)
    except SetupError as e:
        print(f"error: {e}", file=err, flush=True)
        return EXIT_SETUP
    except Exception:
        traceback.print_exc()
        print(
            "error: the evaluator stopped with an unexpected error (details in its private detail log)",
            file=err,
            flush=True,
        )
        return EXIT_INTERNAL
    for line in _summary(record):
        print(line, file=out, flush=True)
    return EXIT_OK if record.status == "ok" else EXIT_REJECTED


@contextlib.contextmanager
def _private_output(detail: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """While scoring, this process's stdout and stderr (fds 1 and 2, so C++ warnings too, and
    sys.stdout/sys.stderr) go to the detail log; yields streams to the original stdout and
    stderr for the fixed lines. Restored on the way out."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    err = os.fdopen(os.dup(2), "w", buffering=1)
    old_streams = sys.stdout, sys.stderr
    log = None
    if detail.parent.is_dir():
        fd = os.open(detail, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        log = os.fdopen(os.dup(1), "w", buffering=1)
        sys.stdout = sys.stderr = log
    try:
        yield out, err
    finally:
        if log is not None:
            log.flush()
            sys.stdout, sys.stderr = old_streams
            log.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close()
        err.close()


if __name__ == "__main__":
    sys.exit(main())
