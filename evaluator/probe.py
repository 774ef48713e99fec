"""The causality probe: a model's prediction at position t may depend only on its own row, tokens <= t.

The probe runs on the real evaluation batches, picked with a secret seed (os.urandom), so the
model cannot tell a probe input from an eval input; the graph is stateless (no buffer may be
mutated), so it cannot remember either. Every perturbation splices in other real validation
text (`spare` rows), never synthetic tokens. For each probe batch:

- rows check: a random half of the rows is kept, the other rows are replaced by other real rows
  and the batch is permuted; every position of every kept row must be unchanged (no mixing of
  rows, whether symmetric like a batch mean or tied to a batch index);
- cut checks: every row gets its own random cut c and continues from c with other real text
  (so every other row of the batch changes too); each row's predictions at positions < c must be
  unchanged (no peeking at future tokens). Cutting every row, rather than keeping some rows whole,
  doubles the positions tested per forward pass: a model peeking k tokens ahead is caught only
  at the k positions before a cut, so a leak that fires on some tokens only is caught with a
  probability that grows with the number of cut rows (batches * cuts * B).

What is compared, and the tolerance. The score only sees log-probabilities, so those are what
is compared (float32 log_softmax), not raw logits: raw logits can be shifted by any constant
without changing the score, so a tolerance relative to their magnitude (e.g. 1e-4*max|logit|)
could be inflated at will by a cheating model. Log-probabilities are floored at -30 nats before
comparing: a model gains nothing by moving probability mass it gives below e^-30 (an honest
model can floor all its probabilities there at a cost of about vocab*e^-30 nats per token), and
float noise in such far-tail entries is not a reason to refuse a model. The absolute tolerance
(default 1e-4 nats) bounds what a leak hidden below it can buy: at most that many nats per
scored token, ~3e-5 bits per byte at ~4 bytes per token. An honest model gives bit-identical
rows here (same shapes, same kernels), so the margin is for float noise only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from evaluator.profiles import Profile
from evaluator.records import ProbeResult

LOGPROB_FLOOR = -30.0
_MAX_REPORTED = 1e30


@dataclass(frozen=True)
class ProbeConfig:
    batches: int = 4  # eval batches probed
    cuts: int = 2  # cut checks per probed batch (plus one rows check)
    tolerance: float = 1e-4  # nats, on floored log-probabilities

    @classmethod
    def for_profile(cls, profile: Profile, batches: int = 4, cuts: int | None = None) -> ProbeConfig:
        """Enough cuts to test the profile's probe_positions. Each cut tests one position per row,
        and a model that peeks only at a fraction p of positions escapes n tested positions with
        probability (1 - p) ** n, so the profile fixes n rather than the number of forwards."""
        if cuts is None:
            cuts = max(cls.cuts, math.ceil(profile.probe_positions / (batches * profile.eval_batch_size)))
        return cls(batches=batches, cuts=cuts)


DEFAULT_PROBE = ProbeConfig()


def secret_rng() -> np.random.Generator:
    """A generator seeded from the OS, never from anything the run could know or set."""
    return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))


def floored_logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).clamp_min(LOGPROB_FLOOR)


def _row_pool(inputs: torch.Tensor, spare: torch.Tensor, probe_batch: int) -> torch.Tensor:
    """Other real validation rows to splice in: the spare rows, else other eval batches' rows."""
    if spare.numel():
        return spare.reshape(-1, spare.shape[-1])
    others = [inputs[i] for i in range(inputs.shape[0]) if i != probe_batch]
    if not others:
        raise ValueError("the causality probe needs spare validation rows or a second eval batch")
    return torch.cat(others)


def _kept_rows(rng: np.random.Generator, batch_size: int) -> np.ndarray:
    return np.sort(rng.choice(batch_size, size=max(1, batch_size // 2), replace=False))


@dataclass
class _Tally:
    checks: int = 0
    max_abs_diff: float = 0.0
    failure: str | None = None

    def compare(self, got: torch.Tensor, want: torch.Tensor, tolerance: float, failure: str) -> None:
        diff = (got - want).abs().max().item() if got.numel() else 0.0
        if not diff <= _MAX_REPORTED:  # NaN or inf: an unbounded change, kept JSON-finite
            diff = _MAX_REPORTED
        self.max_abs_diff = max(self.max_abs_diff, diff)
        if diff > tolerance and self.failure is None:
            self.failure = failure


def run_probe(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    spare: torch.Tensor,
    config: ProbeConfig = DEFAULT_PROBE,
    rng: np.random.Generator | None = None,
) -> ProbeResult:
    """Probe `forward` (tokens (B, T) int64 -> logits (B, T, V)) on real eval batches.

    inputs: (n_batches, B, T) int64 eval inputs; spare: (k, B, T) int64 other validation rows.
    """
    rng = rng or secret_rng()
    n_batches, batch_size, seq_len = inputs.shape
    tally = _Tally()
    chosen = rng.choice(n_batches, size=min(config.batches, n_batches), replace=False)
    for b in (int(i) for i in chosen):
        tokens = inputs[b]
        pool = _row_pool(inputs, spare, b)
        base = floored_logprobs(forward(tokens))

        # Rows check: permute the batch and replace the rows that are not kept.
        kept = _kept_rows(rng, batch_size)
        perm = rng.permutation(batch_size)  # new position i holds original row perm[i]
        mixed = tokens[torch.from_numpy(perm)].clone()
        where = {int(row): i for i, row in enumerate(perm)}
        kept_positions = {where[int(r)] for r in kept}
        for i in range(batch_size):
            if i not in kept_positions:
                mixed[i] = pool[int(rng.integers(len(pool)))]
        out = floored_logprobs(forward(mixed))
        tally.checks += 1
        for r in kept:
            tally.compare(
                out[where[int(r)]],
                base[int(r)],
                config.tolerance,
                f"row {int(r)}'s predictions changed when the other rows of the batch were replaced or "
                "reordered: rows must be independent",
            )
        if tally.failure:
            break

        # Cut checks: every row gets its own cut; from the cut on it continues with other real text.
        for _ in range(config.cuts):
            cuts = [int(c) for c in rng.integers(1, seq_len, size=batch_size)] if seq_len > 1 else []
            spliced = torch.stack([pool[int(rng.integers(len(pool)))] for _ in range(batch_size)])
            for r, c in enumerate(cuts):
                spliced[r, :c] = tokens[r, :c]
            out = floored_logprobs(forward(spliced))
            tally.checks += 1
            for r, c in enumerate(cuts):
                tally.compare(
                    out[r, :c],
                    base[r, :c],
                    config.tolerance,
                    f"predictions before position {c} of row {r} changed when the tokens from position {c} on "
                    "were replaced: the model looks at future tokens",
                )
            if tally.failure:
                break
        if tally.failure:
            break
    return ProbeResult(
        passed=tally.failure is None,
        checks=tally.checks,
        max_abs_diff=tally.max_abs_diff,
        tolerance=config.tolerance,
        failure=tally.failure,
    )
