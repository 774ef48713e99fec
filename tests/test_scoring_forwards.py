"""Forward passes per scoring on the `gpu` profile, counted: every eval batch once, and the causality
probe's perturbed forwards on top, at most 15% of the scoring forwards (the probe's bases are the
scoring forwards themselves). The old design is counted the same way for comparison.

The model is tiny (the gpu profile with seq_len 16 and vocab 64); the batch count (320) and the
rows per batch (32) are the gpu profile's, and so are the probe's tested positions (1536)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evaluator.score as score_module
from evaluator.probe import ProbeConfig, floored_logprobs
from evaluator.profiles import get_profile
from evaluator.score import eval_tensors, score_model, token_byte_table

GPU = get_profile("gpu")
SMALL_GPU = dataclasses.replace(GPU, seq_len=16, vocab_size=64, eval_tokens=GPU.eval_batches * GPU.eval_batch_size * 16)
OLD_PROBE_POSITIONS, OLD_PROBE_BATCHES = 4096, 4  # the old design, before issue 11


class CausalAttention(nn.Module):
    """Honest: causal self-attention, one block, so the probe passes and nothing else counts."""

    def __init__(self, vocab: int, dim: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        return self.head(x + y).float()


class Counter:
    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def wrap(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def counting(tokens: torch.Tensor) -> torch.Tensor:
            self.calls.append(tokens)
            return forward(tokens)

        return counting


def _data(profile):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    B, T, n = profile.eval_batch_size, profile.seq_len, profile.eval_batches
    rows = rng.integers(1, profile.vocab_size, size=(n + 4, B, T + 1))
    data = eval_tensors(rows[:n, :, :-1], rows[:n, :, 1:], rows[n:, :, :-1], profile)
    return data, token_byte_table(rng.integers(1, 5, size=profile.vocab_size), profile.vocab_size)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = CausalAttention(SMALL_GPU.vocab_size).eval()
    example = torch.zeros((SMALL_GPU.eval_batch_size, SMALL_GPU.seq_len), dtype=torch.int64)
    path = tmp_path_factory.mktemp("fwd") / "model.pt2"
    with torch.no_grad():
        torch.export.save(torch.export.export(model, (example,), strict=False), str(path))
    return path


def old_design_probe(
    forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, spare: torch.Tensor, rng: np.random.Generator
) -> None:
    """The probe before issue 11 (evaluator/probe.py of commit 22f57c3), its forward passes only:
    per probed batch, its base forward computed again, one rows check, and one cut check per
    probe_positions / (batches * B) positions; the scoring forwards came on top."""
    batch_size, seq_len = inputs.shape[1:]
    cuts = math.ceil(OLD_PROBE_POSITIONS / (OLD_PROBE_BATCHES * batch_size))
    pool = spare.reshape(-1, seq_len)
    for b in rng.choice(inputs.shape[0], size=OLD_PROBE_BATCHES, replace=False):
        tokens = inputs[int(b)]
        floored_logprobs(forward(tokens))
        mixed = tokens[torch.from_numpy(rng.permutation(batch_size))]
        floored_logprobs(forward(mixed))
        for _ in range(cuts):
            spliced = pool[torch.from_numpy(rng.integers(len(pool), size=batch_size))].clone()
            for r, c in enumerate(rng.integers(1, seq_len, size=batch_size)):
                spliced[r, :c] = tokens[r, :c]
            floored_logprobs(forward(spliced))


def test_gpu_scoring_runs_each_eval_batch_once_and_the_probe_adds_at_most_15_percent(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = Counter()
    real = score_module.checked_forward
    monkeypatch.setattr(score_module, "checked_forward", lambda *a, **k: counter.wrap(real(*a, **k)))
    data, table = _data(SMALL_GPU)
    record, _rows = score_model(artifact, data, table, SMALL_GPU, rng=np.random.default_rng(1))
    assert record.status == "ok" and record.probe is not None and record.probe.passed, record.reason

    scoring = sum(any(torch.equal(call, batch) for batch in data.inputs) for call in counter.calls)
    probe = len(counter.calls) - scoring
    assert scoring == GPU.eval_batches == 320  # each eval batch exactly once: the bases are reused
    assert probe == record.probe.checks == ProbeConfig.for_profile(GPU).forwards == 48
    assert record.forwards == len(counter.calls) == 368
    assert record.probe.positions >= GPU.probe_positions
    share = probe / scoring
    print(f"gpu scoring: {scoring} scoring + {probe} probe forwards, probe_share {share:.3f}")
    assert share <= 0.15


def test_the_old_design_cost_the_gpu_profile_136_probe_forwards_on_top_of_320() -> None:
    counter = Counter()
    data, _ = _data(SMALL_GPU)
    model = CausalAttention(SMALL_GPU.vocab_size).eval()
    with torch.inference_mode():
        old_design_probe(counter.wrap(model), data.inputs, data.spare, np.random.default_rng(0))
    probe = len(counter.calls)
    share = probe / GPU.eval_batches
    print(f"old design: {GPU.eval_batches} scoring + {probe} probe forwards, probe_share {share:.3f}")
    assert probe == OLD_PROBE_BATCHES * (1 + 1 + 32) == 136
    assert share > 0.4  # 42.5%: the reason for the redesign
