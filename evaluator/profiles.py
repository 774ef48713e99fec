"""Profiles: the fixed constants of an experiment, chosen by the controller, never by train.py.

train.py reads the active profile (named by OVERNIGHT_PROFILE) for its sequence length and
budget; the evaluator is handed the profile name by the controller on its own command line, so
nothing train.py does in its own process can change what the evaluator uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "OVERNIGHT_PROFILE"


@dataclass(frozen=True)
class Profile:
    name: str
    seq_len: int  # tokens per row, for training and for the exported model's input
    time_budget_s: float  # wall-clock training budget, as in the original autoresearch
    max_steps: int | None  # when set, the budget is this many optimizer steps (deterministic on CPU)
    eval_tokens: int  # tokens scored by the evaluator (a multiple of eval_batch_size * seq_len)
    eval_batch_size: int  # rows per eval batch: the exported model takes (eval_batch_size, seq_len)
    vocab_size: int  # BPE vocabulary including the special BOS token
    dataset: str  # default dataset for `python -m evaluator.prepare`
    max_train_bytes: int | None  # cap on train text read at preparation (None = all of it)
    max_val_bytes: int | None  # cap on validation text read at preparation (None = all of it)
    startup_grace_s: float  # added to the budget for the hard kill measured from outside
    eval_timeout_s: float  # hard cap on the eval container
    probe_positions: int  # positions the causality probe tests by cuts (one per row per forward)

    @property
    def eval_batch_tokens(self) -> int:
        return self.eval_batch_size * self.seq_len

    @property
    def eval_batches(self) -> int:
        return self.eval_tokens // self.eval_batch_tokens

    @property
    def train_cap_s(self) -> float:
        """Hard wall-clock cap on the train container: budget plus start-up grace."""
        return self.time_budget_s + self.startup_grace_s


PROFILES: dict[str, Profile] = {
    # The original scale: one H100, five minutes, ~21M eval tokens.
    "gpu": Profile(
        name="gpu",
        seq_len=2048,
        time_budget_s=300.0,
        max_steps=None,
        eval_tokens=40 * 524_288,
        eval_batch_size=32,
        vocab_size=8192,
        dataset="climbmix",
        max_train_bytes=None,
        max_val_bytes=None,
        startup_grace_s=240.0,  # torch.compile warm-up happens before the budget clock starts
        eval_timeout_s=900.0,
        probe_positions=4096,  # a leak at 0.1% of positions escapes with probability 1.7%
    ),
    # About a minute per experiment on 2 CPU cores.
    "cpu": Profile(
        name="cpu",
        seq_len=256,
        time_budget_s=45.0,
        max_steps=None,
        eval_tokens=16 * 256 * 16,  # 65,536 tokens
        eval_batch_size=16,
        vocab_size=4096,
        dataset="stdlib",
        max_train_bytes=None,
        max_val_bytes=None,
        startup_grace_s=60.0,
        eval_timeout_s=300.0,
        probe_positions=1024,  # a leak at 0.5% of positions escapes with probability 0.6%
    ),
    # Tests: a fixed number of steps so a run is deterministic on CPU and replays exactly.
    "test": Profile(
        name="test",
        seq_len=64,
        time_budget_s=30.0,
        max_steps=12,
        eval_tokens=8 * 64 * 8,  # 4,096 tokens
        eval_batch_size=8,
        vocab_size=512,
        dataset="stdlib",
        max_train_bytes=2_000_000,
        max_val_bytes=400_000,
        startup_grace_s=60.0,
        eval_timeout_s=120.0,
        probe_positions=1024,
    ),
}


class UnknownProfileError(ValueError):
    pass


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise UnknownProfileError(f"unknown profile {name!r}; choose one of: {known}") from None


def active_profile() -> Profile:
    """The profile this process runs under, named by OVERNIGHT_PROFILE (default: cpu)."""
    return get_profile(os.environ.get(PROFILE_ENV, "cpu"))
