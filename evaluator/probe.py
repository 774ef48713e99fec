"""The causality probe: a model's prediction at position t may depend only on its own row, tokens <= t.

The probe runs on the real evaluation batches, picked with a secret seed (os.urandom), so the
model cannot tell a probe input from an eval input; the graph is stateless (no buffer may be
mutated), so it cannot remember either. The base of every comparison is the scoring forward of
that batch itself, so the probe costs only its perturbed forwards. Every perturbation splices in
other real validation text (`spare` rows, else other eval rows), never synthetic tokens.

One probe forward tests one position per row, and tests causality and row independence at once:
- each row of the probe batch is a row of the base batch, moved to a random other place in the
  batch (a permutation), and cut at its own random position c: from c on it continues with other
  real text, so every other row of the batch changes too;
- each row's predictions before its cut must be what the base forward gave that row: a model
  that looks at future tokens is caught at the position before a cut (a leak at a fraction p of
  positions escapes n tested positions with probability (1-p)^n), and a model that mixes rows
  (a batch mean, a neighbour row, a batch index) is caught at every tested row.
A profile fixes n (`probe_positions`), so the number of probe forwards is n / batch rows.

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

What a failure says is fixed text (evaluator.records): where the probe caught the model depends
on validation tokens, and nothing the agent can read may carry values computed from them.
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
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProbeConfig:
    forwards: int = 8  # perturbed forward passes (one tested position per row each)
    batches: int = 4  # eval batches whose scoring forwards serve as bases
    tolerance: float = 1e-4  # nats, on floored log-probabilities

    @classmethod
    def for_profile(cls, profile: Profile, batches: int = 4) -> ProbeConfig:
        """Enough forwards to test the profile's probe_positions (one per row per forward)."""
        forwards = max(1, math.ceil(profile.probe_positions / profile.eval_batch_size))
        return cls(forwards=forwards, batches=min(batches, profile.eval_batches))

    def positions(self, batch_size: int) -> int:
        return self.forwards * batch_size


def secret_rng() -> np.random.Generator:
    """A generator seeded from the OS, never from anything the run could know or set."""
    return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))


def floored_logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).clamp_min(LOGPROB_FLOOR)


class Probe:
    """Used by the scorer: `wants(b)` says whether batch b is a probe base; `check(b, tokens,
    logits)` runs that base's share of the perturbed forwards against the scoring forward's logits."""

    def __init__(
        self,
        forward: Forward,
        inputs: torch.Tensor,
        spare: torch.Tensor,
        config: ProbeConfig,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.forward = forward
        self.inputs = inputs
        self.spare = spare
        self.config = config
        self.rng = rng or secret_rng()
        n_batches = inputs.shape[0]
        chosen = self.rng.choice(n_batches, size=min(config.batches, n_batches), replace=False)
        # Spread the forwards over the chosen bases as evenly as possible.
        self.plan = {
            int(b): config.forwards // len(chosen) + (i < config.forwards % len(chosen)) for i, b in enumerate(chosen)
        }
        self.checks = 0
        self.max_abs_diff = 0.0
        self.failed = False

    def wants(self, b: int) -> bool:
        return self.plan.get(b, 0) > 0 and not self.failed

    def check(self, b: int, logits: torch.Tensor) -> None:
        base = floored_logprobs(logits)
        tokens = self.inputs[b]
        pool = _row_pool(self.inputs, self.spare, b)
        batch_size, seq_len = tokens.shape
        for _ in range(self.plan.get(b, 0)):
            perm = self.rng.permutation(batch_size)  # probe row i holds base row perm[i]
            cuts = self.rng.integers(1, seq_len, size=batch_size) if seq_len > 1 else np.ones(batch_size, int)
            probe = torch.stack([pool[int(self.rng.integers(len(pool)))] for _ in range(batch_size)]).clone()
            for i in range(batch_size):
                c = int(cuts[i])
                probe[i, :c] = tokens[int(perm[i]), :c]
            out = floored_logprobs(self.forward(probe))
            self.checks += 1
            for i in range(batch_size):
                c = int(cuts[i])
                self._compare(out[i, :c], base[int(perm[i]), :c])
            if self.failed:
                return

    def _compare(self, got: torch.Tensor, want: torch.Tensor) -> None:
        diff = (got - want).abs().max().item() if got.numel() else 0.0
        if not diff <= _MAX_REPORTED:  # NaN or inf: an unbounded change, kept JSON-finite
            diff = _MAX_REPORTED
        self.max_abs_diff = max(self.max_abs_diff, diff)
        if diff > self.config.tolerance:
            self.failed = True

    def result(self) -> ProbeResult:
        return ProbeResult(
            passed=not self.failed,
            checks=self.checks,
            positions=self.checks * int(self.inputs.shape[1]),
            max_abs_diff=self.max_abs_diff,
            tolerance=self.config.tolerance,
        )


def _row_pool(inputs: torch.Tensor, spare: torch.Tensor, probe_batch: int) -> torch.Tensor:
    """Other real validation rows to splice in: the spare rows, else other eval batches' rows."""
    if spare.numel():
        return spare.reshape(-1, spare.shape[-1])
    others = [inputs[i] for i in range(inputs.shape[0]) if i != probe_batch]
    if not others:
        raise ValueError("the causality probe needs spare validation rows or a second eval batch")
    return torch.cat(others)


def run_probe(
    forward: Forward,
    inputs: torch.Tensor,
    spare: torch.Tensor,
    config: ProbeConfig = ProbeConfig(),
    rng: np.random.Generator | None = None,
) -> ProbeResult:
    """The probe on its own (tests and tools): computes each base batch's forward itself."""
    probe = Probe(forward, inputs, spare, config, rng)
    for b in range(inputs.shape[0]):
        if probe.wants(b):
            probe.check(b, forward(inputs[b]))
    return probe.result()
