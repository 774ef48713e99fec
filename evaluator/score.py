"""Score a run's model artifact: `python -m evaluator.score --artifact PATH --data-dir DIR
--profile NAME --out PATH [--device cpu|cuda]`.

Runs no code a run wrote: the artifact is read by `evaluator.artifact` (no pickle, ops from an
allowlist, no mutation), probed for causality on real validation text (`evaluator.probe`), and
the cross-entropy is computed here from the logits, in float32, over the profile's fixed eval
tokens. Targets whose token is 0 bytes long (BOS) count in neither the nats nor the bytes.

    val_bpb = total_nats / (ln 2 * total_bytes)

Exit codes: 0 scored (score.json status "ok"), 3 rejected (score.json status "rejected" with a
reason), 2 bad setup (missing data, manifest mismatch, bad arguments: one line on stderr, no
score.json). score.json is written atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluator.artifact import DEFAULT_LIMITS, ArtifactLimits, ArtifactRejected, load_artifact
from evaluator.probe import ProbeConfig, run_probe
from evaluator.profiles import Profile, UnknownProfileError, get_profile
from evaluator.records import ProbeResult, ScoreRecord

EXIT_OK = 0
EXIT_SETUP = 2
EXIT_REJECTED = 3
SCORE_SEED = 0


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
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    targets = targets.to(logprobs.device)
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lengths = token_bytes.to(logprobs.device)[targets]
    scored = lengths > 0
    return Totals(
        nats=float(nll[scored].double().sum().item()),
        tokens=int(scored.sum().item()),
        bytes=int(lengths.sum().item()),
    )


def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    token_bytes: torch.Tensor,
) -> Totals:
    totals = Totals()
    for b in range(inputs.shape[0]):
        totals.add(cross_entropy_totals(forward(inputs[b]), targets[b], token_bytes))
    return totals


# ---------------------------------------------------------------------------------------------
# Running the model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def checked_forward(
    model: Callable[[torch.Tensor], torch.Tensor], device: str, batch_size: int, seq_len: int, vocab_size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens -> logits on `device`, refusing anything but finite float (B, T, vocab) logits."""
    want = (batch_size, seq_len, vocab_size)

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        try:
            logits = model(tokens.to(device))
        except ArtifactRejected:
            raise
        except Exception as e:
            raise ArtifactRejected(f"the model failed to run: {type(e).__name__}: {_first_line(e)}") from None
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise ArtifactRejected("the model did not return floating-point logits")
        if tuple(logits.shape) != want:
            raise ArtifactRejected(f"the model returned logits of shape {tuple(logits.shape)}, expected {want}")
        if not bool(torch.isfinite(logits).all()):
            raise ArtifactRejected("the model returned NaN or infinite logits")
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
    data: EvalTensors,
    token_bytes: torch.Tensor,
    profile: Profile,
    device: str = "cpu",
    probe_config: ProbeConfig | None = None,
    limits: ArtifactLimits = DEFAULT_LIMITS,
    rng: np.random.Generator | None = None,
    manifest_sha256: str | None = None,
) -> ScoreRecord:
    """Load, probe and score one artifact. Returns the record; a refusal is status "rejected"."""
    started = time.perf_counter()
    torch.manual_seed(SCORE_SEED)
    probe: ProbeResult | None = None
    sha256: str | None = None
    B, T, V = profile.eval_batch_size, profile.seq_len, profile.vocab_size
    try:
        model = load_artifact(artifact, B, T, device=device, limits=limits)
        sha256 = model.sha256
        forward = checked_forward(model, device, B, T, V)
        with torch.inference_mode():
            config = probe_config or ProbeConfig.for_profile(profile)
            probe = run_probe(forward, data.inputs, data.spare, config, rng)
            if not probe.passed:
                raise ArtifactRejected(f"causality probe failed: {probe.failure}")
            totals = evaluate(forward, data.inputs, data.targets, token_bytes)
    except ArtifactRejected as e:
        return ScoreRecord(
            status="rejected",
            reason=e.reason,
            profile=profile.name,
            probe=probe,
            eval_seconds=time.perf_counter() - started,
            manifest_sha256=manifest_sha256,
            artifact_sha256=sha256 or e.sha256,
        )
    if totals.bytes == 0 or totals.tokens == 0:
        raise SetupError("the eval set has no scored bytes")
    return ScoreRecord(
        status="ok",
        profile=profile.name,
        val_bpb=totals.bpb,
        val_loss_nats=totals.loss,
        tokens=totals.tokens,
        bytes=totals.bytes,
        probe=probe,
        eval_seconds=time.perf_counter() - started,
        manifest_sha256=manifest_sha256,
        artifact_sha256=sha256,
    )


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
    parser = argparse.ArgumentParser(prog="python -m evaluator.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="the run's model.pt2")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared data dir (tokenizer + val)")
    parser.add_argument("--profile", required=True, help="profile name: gpu, cpu or test")
    parser.add_argument("--out", type=Path, required=True, help="where to write score.json")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--probe-batches", type=int, default=ProbeConfig.batches)
    parser.add_argument("--probe-cuts", type=int, default=None,
                        help="cut checks per probed batch (default: enough for the profile's probe_positions)")
    return parser.parse_args(argv)


def _load_setup(args: argparse.Namespace) -> tuple[Profile, EvalTensors, torch.Tensor, str]:
    from evaluator.dataloader import eval_batches
    from evaluator.manifest import verify_manifest
    from evaluator.tokenizer import load_token_bytes

    try:
        profile = get_profile(args.profile)
    except UnknownProfileError as e:
        raise SetupError(str(e)) from None
    if not args.out.parent.is_dir():
        raise SetupError(f"the score folder {args.out.parent} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda was asked for but no CUDA device is visible")
    if args.probe_batches < 1 or (args.probe_cuts is not None and args.probe_cuts < 0):
        raise SetupError("--probe-batches must be >= 1 and --probe-cuts >= 0")
    if not args.data_dir.is_dir():
        raise SetupError(f"data dir {args.data_dir} does not exist: run make prepare")
    try:
        manifest_sha = verify_manifest(args.data_dir, ["val"])
        token_bytes = token_byte_table(load_token_bytes(args.data_dir), profile.vocab_size)
        raw = eval_batches(args.data_dir, profile)
    except SetupError:
        raise
    except (ValueError, OSError) as e:  # ManifestError, TokenizerError, NotEnoughValidationData are ValueErrors
        raise SetupError(_first_line(e)) from None
    return profile, eval_tensors(raw.inputs, raw.targets, raw.spare, profile), token_bytes, manifest_sha


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        profile, data, token_bytes, manifest_sha = _load_setup(args)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SETUP
    try:
        record = score_model(
            args.artifact,
            data,
            token_bytes,
            profile,
            device=args.device,
            probe_config=ProbeConfig.for_profile(profile, args.probe_batches, args.probe_cuts),
            manifest_sha256=manifest_sha,
        )
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SETUP
    write_score(record, args.out)
    if record.status == "ok":
        print(f"val_bpb: {record.val_bpb:.6f}")
        print(f"val_loss_nats: {record.val_loss_nats:.6f}")
        print(f"tokens: {record.tokens}")
        print(f"bytes: {record.bytes}")
        print(f"probe_checks: {record.probe.checks if record.probe else 0}")
        print(f"eval_seconds: {record.eval_seconds:.1f}")
        return EXIT_OK
    print(f"rejected: {record.reason}")
    return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
