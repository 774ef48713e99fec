"""Profiles: the fixed constants of an experiment, chosen by the controller, never by train.py.

train.py reads the active profile (named by OVERNIGHT_PROFILE) for its sequence length and
budget; the evaluator is handed the profile name by the controller on its own command line, so
nothing train.py does in its own process can change what the evaluator uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

PROFILE_ENV = "OVERNIGHT_PROFILE"


@dataclass(frozen=True)
class Profile:
    name: str
    seq_len: int  # tokens per row, for training and for the exported model's input
    # The budget: wall clock from the train container's start (measured by the host) until
    # train.py must call submit(). Start-up, imports and compilation count, so every experiment
    # gets the same total. train.py is told the deadline (RunContext.deadline) and plans within it.
    time_budget_s: float
    # After the budget, time for submit() to export the model. The host kills the container at
    # budget + allowance and a run killed there gets no score. At most 10% of the budget (or
    # MIN_ALLOWANCE_S on tiny budgets); whatever train.py does, it gets no more compute than this.
    export_allowance_s: float
    # A convenience for deterministic tests: the seed stops after this many optimizer steps.
    # Never a limit anyone relies on: only the wall clock above is enforced.
    max_steps: int | None
    eval_tokens: int  # tokens scored by the evaluator (a multiple of eval_batch_size * seq_len)
    eval_batch_size: int  # rows per eval batch: the exported model takes (eval_batch_size, seq_len)
    vocab_size: int  # BPE vocabulary including the special BOS token
    dataset: str  # default dataset for `python -m evaluator.prepare`
    max_train_bytes: int | None  # cap on train text read at preparation (None = all of it)
    max_val_bytes: int | None  # cap on validation text read at preparation (None = all of it)
    eval_timeout_s: float  # hard cap on the eval container
    probe_positions: int  # positions the causality probe tests (one per probe row)
    memory_gb: float  # RAM limit of each container (no swap), sized from measurement

    def __post_init__(self) -> None:
        if self.export_allowance_s > max(0.1 * self.time_budget_s, MIN_ALLOWANCE_S):
            raise ValueError(f"profile {self.name}: the export allowance is over 10% of the budget")

    @property
    def eval_batch_tokens(self) -> int:
        return self.eval_batch_size * self.seq_len

    @property
    def eval_batches(self) -> int:
        return self.eval_tokens // self.eval_batch_tokens

    @property
    def eval_rows(self) -> int:
        return self.eval_batches * self.eval_batch_size

    @property
    def train_cap_s(self) -> float:
        """Hard wall-clock cap on the train container: the budget plus the export allowance."""
        return self.time_budget_s + self.export_allowance_s


MIN_ALLOWANCE_S = 5.0  # the allowance a tiny budget may have even when it is over 10% ("a few seconds")

PROFILES: dict[str, Profile] = {
    # The original scale on one H100: about 300 s of training. The budget counts start-up and
    # torch.compile too; with the night's warm compile cache the seed spends roughly 20-30 s on
    # them (an estimate: no GPU was at hand to measure), so the budget is 330 s in all, and
    # exporting the compiled model gets 30 s (9%).
    "gpu": Profile(
        name="gpu",
        seq_len=2048,
        time_budget_s=330.0,
        export_allowance_s=30.0,
        max_steps=None,
        eval_tokens=40 * 524_288,
        eval_batch_size=32,
        vocab_size=8192,
        dataset="climbmix",
        max_train_bytes=None,
        max_val_bytes=None,
        eval_timeout_s=900.0,
        probe_positions=1536,
        # Not measured (no GPU at hand); estimated for ClimbMix: the train shards (~1.5 GB of
        # tokens for ten) are memory-mapped, i.e. reclaimable page cache, never copied; the
        # document table and the packer's list of it ~0.3 GB; CUDA, torch and Triton in the host
        # process ~3-4 GB; Inductor's compile workers (min(32, cores) processes) up to ~10 GB;
        # the unpacked compile cache at most 1 GB. About 15 GB; eval ~4 GB. `make bench-gpu`
        # prints the peaks (train_peak_ram_gb, eval_peak_ram_gb) to replace this estimate.
        memory_gb=24.0,
    ),
    # About a minute per experiment on 2 CPU cores.
    "cpu": Profile(
        name="cpu",
        seq_len=256,
        time_budget_s=45.0,
        export_allowance_s=4.5,
        max_steps=None,
        eval_tokens=16 * 256 * 16,  # 65,536 tokens
        eval_batch_size=16,
        vocab_size=4096,
        dataset="stdlib",
        max_train_bytes=None,
        max_val_bytes=None,
        eval_timeout_s=300.0,
        probe_positions=1024,
        # Measured peaks in containers (make bench-gpu PROFILE=cpu): train 0.64-0.70 GB, 0.74 GB
        # with torch.compile forced on and its warm cache unpacked; eval 0.71-0.76 GB.
        memory_gb=2.0,
    ),
    # Tests: the seed stops after 12 steps, so a run is deterministic on CPU and replays exactly
    # (well inside the 20 s budget, which is what is enforced).
    "test": Profile(
        name="test",
        seq_len=64,
        time_budget_s=20.0,
        export_allowance_s=5.0,
        max_steps=12,
        eval_tokens=8 * 64 * 8,  # 4,096 tokens
        eval_batch_size=8,
        vocab_size=512,
        dataset="stdlib",
        max_train_bytes=2_000_000,
        max_val_bytes=400_000,
        eval_timeout_s=120.0,
        probe_positions=1024,
        # Measured peaks in containers: train 0.31-0.32 GB, 0.49 GB with torch.compile forced
        # on and its warm cache; eval 0.24 GB.
        memory_gb=1.0,
    ),
}


# ---------------------------------------------------------------------------------------------
# Preflight profiles: a proposal's CPU check before it takes a slot (evaluator.preflight). The
# exported model must take the night's real eval shape, so seq_len, vocab_size and
# eval_batch_size are the night's; the rest is small: two steps, a short budget, one probe batch.

PREFLIGHT_SUFFIX = "-preflight"
PREFLIGHT_STEPS = 2  # optimizer steps the seed takes (the budget below still rules)
PREFLIGHT_BUDGET_FRACTION = 0.1  # of the night's budget, told to train.py as its budget
PREFLIGHT_MIN_BUDGET_S = 20.0  # import torch, two CPU steps and export, on a loaded shared CPU host
PREFLIGHT_PROBE_FORWARDS = 2  # perturbed forwards of the probe (one tested position per row each)
PREFLIGHT_MIN_CHECK_S = 20.0  # the checks (archive, graph, probe) after train.py: at least this


def preflight_profile(profile: Profile) -> Profile:
    """The preflight's profile for a night profile: the same shapes, two steps, a short budget
    (10% of the night's, at least 20 s), one probe base batch and a few probe forwards. Its
    eval_timeout_s caps the checks that follow train.py."""
    budget = max(PREFLIGHT_MIN_BUDGET_S, PREFLIGHT_BUDGET_FRACTION * profile.time_budget_s)
    return replace(
        profile,
        name=profile.name + PREFLIGHT_SUFFIX,
        time_budget_s=budget,
        export_allowance_s=max(MIN_ALLOWANCE_S, 0.1 * budget),
        max_steps=PREFLIGHT_STEPS,
        eval_tokens=profile.eval_batch_tokens,  # one probe base batch, drawn from the train split
        eval_timeout_s=max(PREFLIGHT_MIN_CHECK_S, 0.1 * profile.eval_timeout_s),
        probe_positions=PREFLIGHT_PROBE_FORWARDS * profile.eval_batch_size,
    )


PREFLIGHT_PROFILES: dict[str, Profile] = {p.name: p for p in map(preflight_profile, PROFILES.values())}


class UnknownProfileError(ValueError):
    pass


def get_profile(name: str) -> Profile:
    """A night profile, or a preflight profile ("<night>-preflight", which train.py loads by
    OVERNIGHT_PROFILE inside the preflight)."""
    try:
        return PROFILES[name] if name in PROFILES else PREFLIGHT_PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise UnknownProfileError(f"unknown profile {name!r}; choose one of: {known}") from None


def active_profile() -> Profile:
    """The profile this process runs under, named by OVERNIGHT_PROFILE (default: cpu)."""
    return get_profile(os.environ.get(PROFILE_ENV, "cpu"))
