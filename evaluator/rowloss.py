"""Per-row losses: the nats, scored tokens and UTF-8 bytes of every eval row, written by the trusted
evaluator next to score.json, so that two runs compare paired on identical tokens.

File `rowloss.bin`, little-endian, fixed size for a profile (rows = eval_tokens / seq_len):

    header (24 bytes): magic b"OVROWLS\\0" | version uint32 | reserved uint32 (0) | rows uint64
    nats   float64[rows]   sum of -ln p(target) over the row's scored targets
    tokens int64[rows]     scored targets (byte length > 0) in the row
    bytes  int64[rows]     UTF-8 bytes of those targets

Targets whose token is 0 bytes long (BOS) count in none of the three, exactly as in
`evaluator.score.cross_entropy_totals`, so the columns sum to score.json's totals.

The host reads this file as hostile input (`read_rowloss`): no symlink followed, regular files only,
the exact size for the expected row count, checked header and values, totals that agree with
score.json. Every refusal is a `RowLossError` with one line saying why. Only `row_totals` needs
torch (the evaluator image); the format and the reader are numpy only (the host has no torch).
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evaluator.hostile import UnsafeFileError, open_regular
from evaluator.profiles import Profile
from evaluator.records import ScoreRecord

if TYPE_CHECKING:
    import torch

ROWLOSS_FILE = "rowloss.bin"
MAGIC = b"OVROWLS\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIQ")
HEADER_BYTES = _HEADER.size  # 24
BYTES_PER_ROW = 8 + 8 + 8
MAX_ROWS = 1 << 22  # 4M rows (~100 MB); the gpu profile has 10,240
NATS_RTOL = 1e-9  # per-row sums in float64 agree with score.py's flat float64 sum far closer than this


class RowLossError(ValueError):
    """The per-row loss file is missing, malformed or disagrees with score.json; one line why."""


@dataclass(frozen=True)
class RowLosses:
    """Per-row totals of one scored run, in eval order."""

    nats: np.ndarray  # float64 (rows,)
    tokens: np.ndarray  # int64 (rows,)
    bytes: np.ndarray  # int64 (rows,)

    def __post_init__(self) -> None:
        n = len(self.nats)
        if self.nats.ndim != 1 or self.tokens.shape != (n,) or self.bytes.shape != (n,):
            raise RowLossError("nats, tokens and bytes must be 1-d arrays of the same length")

    @property
    def rows(self) -> int:
        return len(self.nats)

    @property
    def total_nats(self) -> float:
        return float(math.fsum(self.nats.tolist()))

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def total_bytes(self) -> int:
        return int(self.bytes.sum())

    @property
    def bpb(self) -> float:
        return self.total_nats / (math.log(2) * self.total_bytes)

    @staticmethod
    def concat(parts: list[RowLosses]) -> RowLosses:
        """The rows of several batches, in order."""
        if not parts:
            return RowLosses(np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return RowLosses(
            nats=np.concatenate([p.nats for p in parts]).astype(np.float64),
            tokens=np.concatenate([p.tokens for p in parts]).astype(np.int64),
            bytes=np.concatenate([p.bytes for p in parts]).astype(np.int64),
        )


def profile_rows(profile: Profile) -> int:
    """Rows a profile's eval set has, i.e. rows every rowloss.bin of that profile must hold."""
    return profile.eval_batches * profile.eval_batch_size


def file_size(rows: int) -> int:
    return HEADER_BYTES + BYTES_PER_ROW * rows


# ---------------------------------------------------------------------------------------------
# Computing (evaluator image, torch)


def row_totals(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> RowLosses:
    """Per-row nats, scored tokens and bytes of one (B, T) batch, computed like
    `evaluator.score.cross_entropy_totals` (log-softmax in float32, sums in float64, targets of
    byte length 0 left out): the rows sum to that function's totals."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    targets = targets.to(logprobs.device)
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lengths = token_bytes.to(logprobs.device)[targets]
    scored = lengths > 0
    nats = torch.where(scored, nll.double(), torch.zeros((), dtype=torch.float64, device=nll.device)).sum(-1)
    return RowLosses(
        nats=nats.cpu().numpy().astype(np.float64),
        tokens=scored.sum(-1).cpu().numpy().astype(np.int64),
        bytes=lengths.sum(-1).cpu().numpy().astype(np.int64),
    )


# ---------------------------------------------------------------------------------------------
# The file format


def encode(rows: RowLosses) -> bytes:
    return b"".join(
        (
            _HEADER.pack(MAGIC, VERSION, 0, rows.rows),
            rows.nats.astype("<f8").tobytes(),
            rows.tokens.astype("<i8").tobytes(),
            rows.bytes.astype("<i8").tobytes(),
        )
    )


def decode(data: bytes, expected_rows: int) -> RowLosses:
    """Parse and check one file's bytes; the row count comes from the caller (the profile), never
    from the file."""
    if len(data) != file_size(expected_rows):
        raise RowLossError(
            f"per-row loss file is {len(data)} bytes, expected {file_size(expected_rows)} for {expected_rows} rows"
        )
    magic, version, reserved, rows = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RowLossError("per-row loss file has a bad magic number (not a rowloss.bin)")
    if version != VERSION or reserved != 0:
        raise RowLossError(f"per-row loss file has version {version}, this evaluator reads version {VERSION}")
    if rows != expected_rows:
        raise RowLossError(f"per-row loss file says {rows} rows, the profile has {expected_rows}")
    n, start = expected_rows, HEADER_BYTES
    nats = np.frombuffer(data, dtype="<f8", count=n, offset=start).astype(np.float64)
    tokens = np.frombuffer(data, dtype="<i8", count=n, offset=start + 8 * n).astype(np.int64)
    nbytes = np.frombuffer(data, dtype="<i8", count=n, offset=start + 16 * n).astype(np.int64)
    if not bool(np.isfinite(nats).all()):
        raise RowLossError("per-row loss file holds NaN or infinite nats")
    if bool((nats < 0).any()):
        raise RowLossError("per-row loss file holds negative nats")
    if bool((tokens < 0).any()) or bool((nbytes < 0).any()):
        raise RowLossError("per-row loss file holds negative token or byte counts")
    if bool((nbytes < tokens).any()):
        raise RowLossError("per-row loss file has a row with fewer bytes than scored tokens")
    if bool(((tokens == 0) & (nats != 0)).any()):
        raise RowLossError("per-row loss file has nats on a row with no scored tokens")
    return RowLosses(nats=nats, tokens=tokens, bytes=nbytes)


def write_rowloss(rows: RowLosses, path: Path) -> None:
    """Write `path` atomically: a temp file in the same folder, fsync, then rename over."""
    if rows.rows > MAX_ROWS:
        raise RowLossError(f"{rows.rows} rows is above the cap of {MAX_ROWS}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Reading on the host (hostile input)


def _read_capped(path: Path, size: int) -> bytes:
    """The file's bytes if it is a regular file (no symlink followed) of exactly `size` bytes."""
    if not os.path.lexists(path):
        raise RowLossError(f"per-row loss file {path.name} is missing")
    try:  # no symlink, regular files only, unchanged between check and open (evaluator.hostile)
        fd, actual = open_regular(path)
    except UnsafeFileError as e:
        raise RowLossError(f"per-row loss file: {e}") from None
    try:
        if actual != size:
            raise RowLossError(f"per-row loss file is {actual} bytes, expected {size}")
        chunks, left = [], size + 1  # one byte more: a file that grew since fstat is refused too
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_against_score(rows: RowLosses, score: ScoreRecord) -> None:
    """The rows must add up to score.json's tokens and bytes exactly, and to its nats within
    float tolerance (score.json keeps the mean nats per token)."""
    if score.status != "ok" or score.val_loss_nats is None or score.val_bpb is None:
        raise RowLossError("score.json has no score to check the per-row losses against")
    if rows.total_tokens != score.tokens or rows.total_bytes != score.bytes:
        raise RowLossError(
            f"per-row losses sum to {rows.total_tokens} tokens / {rows.total_bytes} bytes, "
            f"score.json says {score.tokens} / {score.bytes}"
        )
    want = score.val_loss_nats * score.tokens
    if not math.isclose(rows.total_nats, want, rel_tol=NATS_RTOL, abs_tol=1e-9):
        raise RowLossError(f"per-row losses sum to {rows.total_nats:.9g} nats, score.json says {want:.9g}")
    if not math.isclose(rows.bpb, score.val_bpb, rel_tol=NATS_RTOL, abs_tol=1e-12):
        raise RowLossError(f"per-row losses give val_bpb {rows.bpb:.9f}, score.json says {score.val_bpb:.9f}")


def read_rowloss(path: Path, expected_rows: int, score: ScoreRecord | None = None) -> RowLosses:
    """Read a run's rowloss.bin as hostile input; with `score`, also check it against score.json.
    Raises RowLossError (one line) on anything wrong: the caller records the run as rejected."""
    if not 0 < expected_rows <= MAX_ROWS:
        raise RowLossError(f"expected row count {expected_rows} is outside 1..{MAX_ROWS}")
    rows = decode(_read_capped(Path(path), file_size(expected_rows)), expected_rows)
    if score is not None:
        check_against_score(rows, score)
    return rows
