"""The causality probe refuses models that peek at future tokens or mix rows, and passes causal ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evaluator.probe as probe_module
from evaluator.probe import ProbeConfig, run_probe, secret_rng

V, D, N_BATCHES, B, T = 50, 8, 6, 4, 16
gen = torch.Generator().manual_seed(0)
EMB = torch.randn(V, D, generator=gen)
HEAD = torch.randn(D, V, generator=gen)
INPUTS = torch.randint(1, V, (N_BATCHES, B, T), generator=gen)
SPARE = torch.randint(1, V, (2, B, T), generator=gen)


def features(x: torch.Tensor) -> torch.Tensor:
    """Causal features: running mean of the token embeddings up to each position."""
    e = EMB[x]
    return e.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)


def causal(x: torch.Tensor) -> torch.Tensor:
    return features(x) @ HEAD


def peeks_at_next_token(x: torch.Tensor) -> torch.Tensor:
    nxt = torch.cat([EMB[x[:, 1:]], torch.zeros(x.shape[0], 1, D)], 1)
    return (features(x) + nxt) @ HEAD


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    f = features(x)
    return (f + f.mean(0, keepdim=True)) @ HEAD


def row_one_reads_row_zero(x: torch.Tensor) -> torch.Tensor:
    f = features(x)
    f = torch.cat([f[:1], f[1:2] + f[:1], f[2:]])
    return f @ HEAD


def peeks_only_before_some_tokens(x: torch.Tensor) -> torch.Tensor:
    """Causal except where the next token is one of a few ids (about 8% of positions)."""
    nxt = torch.cat([x[:, 1:], torch.full_like(x[:, :1], V - 1)], 1)
    trigger = (nxt < 5).unsqueeze(-1).float()
    return causal(x) + 5.0 * trigger * torch.nn.functional.one_hot(nxt, V).float()


def tiny_leak_behind_a_huge_logit(x: torch.Tensor) -> torch.Tensor:
    """Leaks 0.01 nats toward the next token; one logit at -1e9 would inflate a max|logit| tolerance."""
    logits = causal(x)
    nxt = torch.nn.functional.one_hot(torch.cat([x[:, 1:], x[:, :1]], 1), V).float()
    logits = logits + 0.01 * nxt
    logits[..., 0] = -1e9  # token 0 never occurs in these inputs, like BOS as a target
    return logits


def probe(forward, seed: int = 0, **config) -> probe_module.ProbeResult:
    return run_probe(forward, INPUTS, SPARE, ProbeConfig(**config), np.random.default_rng(seed))


@pytest.mark.parametrize("seed", range(5))
def test_causal_model_passes(seed):
    result = probe(causal, seed)
    assert result.passed
    assert result.checks == ProbeConfig().forwards and result.positions == ProbeConfig().forwards * B
    assert result.max_abs_diff <= 1e-5


@pytest.mark.parametrize("seed", range(5))
def test_model_peeking_at_the_next_token_is_refused(seed):
    result = probe(peeks_at_next_token, seed)
    assert not result.passed
    assert result.max_abs_diff > result.tolerance


@pytest.mark.parametrize("seed", range(5))
def test_model_peeking_only_on_some_inputs_is_refused(seed):
    result = probe(peeks_only_before_some_tokens, seed, forwards=16)
    assert not result.passed


@pytest.mark.parametrize("seed", range(5))
def test_model_mixing_rows_by_a_batch_mean_is_refused(seed):
    result = probe(batch_mean, seed)
    assert not result.passed


@pytest.mark.parametrize("seed", range(5))
def test_model_where_one_row_reads_another_is_refused(seed):
    assert not probe(row_one_reads_row_zero, seed).passed


def test_a_huge_logit_elsewhere_does_not_loosen_the_tolerance():
    result = probe(tiny_leak_behind_a_huge_logit)
    assert not result.passed


def test_probe_inputs_are_spliced_from_real_validation_rows_only():
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return causal(x)

    probe(spy, forwards=12)
    real = torch.cat([INPUTS.reshape(-1, T), SPARE.reshape(-1, T)])
    assert len(seen) == 4 + 12  # the 4 base batches (scoring forwards when scoring), then 12 probe forwards
    for batch in seen:
        for row in batch:
            # row == prefix of a real row + suffix of a real row, at the same positions
            prefix_ok = (row.unsqueeze(0) == real).cumprod(1).sum(1).max().item()  # longest real prefix
            suffix_ok = (row.unsqueeze(0) == real).flip(1).cumprod(1).sum(1).max().item()
            assert prefix_ok + suffix_ok >= T, f"probe row {row.tolist()} is not real text"
    baselines = seen[0::4]  # each base batch, then its 3 probe forwards
    assert all(any(torch.equal(b, INPUTS[i]) for i in range(N_BATCHES)) for b in baselines)


def test_probe_batches_are_chosen_with_a_secret_os_seed(monkeypatch):
    calls: list[int] = []
    real_urandom = probe_module.os.urandom

    def urandom(n: int) -> bytes:
        calls.append(n)
        return real_urandom(n)

    monkeypatch.setattr(probe_module.os, "urandom", urandom)
    run_probe(causal, INPUTS, SPARE)
    assert calls == [16]
    assert secret_rng().integers(1 << 62) != secret_rng().integers(1 << 62)


def test_probe_without_spare_rows_uses_other_eval_batches():
    empty = torch.empty(0, B, T, dtype=torch.int64)
    assert run_probe(causal, INPUTS, empty, ProbeConfig(), np.random.default_rng(0)).passed
    assert not run_probe(peeks_at_next_token, INPUTS, empty, ProbeConfig(), np.random.default_rng(0)).passed


def test_probe_forwards_per_profile_meet_the_positions_the_profile_fixes():
    from evaluator.profiles import PROFILES

    for profile in PROFILES.values():
        config = ProbeConfig.for_profile(profile)
        assert config.positions(profile.eval_batch_size) >= profile.probe_positions
        assert config.forwards == -(-profile.probe_positions // profile.eval_batch_size)


def test_each_probe_row_is_a_moved_and_cut_base_row_so_one_forward_tests_rows_and_causality():
    """A model that only reads its batch index (row 0 is special) is caught: probe rows move."""

    def row_index_matters(x: torch.Tensor) -> torch.Tensor:
        out = causal(x)
        out[0, :, 1] = out[0, :, 1] + 3.0  # honest per row, but depends on where in the batch a row is
        return out

    assert not probe(row_index_matters, 0).passed
