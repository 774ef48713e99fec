"""Hostile model artifacts against the evaluator directly (no container needed): models that cheat
on the real validation data of the `test` profile (peeking ahead, mixing rows, cheating only on
some inputs, counting calls to spot the probe), graphs whose ops have side effects, and archives
built to run code when loaded. Each is refused, and nothing it carries runs, or it scores no
better than an honest model could."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluator import layout
from evaluator.dataloader import eval_data, load_split
from evaluator.profiles import get_profile
from evaluator.records import REJECT_TEXT, ScoreRecord
from evaluator.score import (
    EXIT_REJECTED,
    EvalTensors,
    eval_tensors,
    score_model,
    token_byte_table,
)
from evaluator.tokenizer import load_token_bytes

PROFILE = get_profile("test")
B, T, V = PROFILE.eval_batch_size, PROFILE.seq_len, PROFILE.vocab_size
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def eval_set(test_data_dir: Path) -> tuple[EvalTensors, torch.Tensor]:
    raw = eval_data(test_data_dir, PROFILE)
    data = eval_tensors(raw.inputs, raw.targets, raw.spare, PROFILE)
    return data, token_byte_table(load_token_bytes(test_data_dir), V)


@pytest.fixture(scope="module")
def trigger(test_data_dir: Path) -> int:
    """A token about 1% of the train split (what a hostile train.py can count): a leak that fires
    after it helps on ~1% of the positions scored, and is invisible at the other 99%."""
    freq = np.bincount(load_split(test_data_dir, "train"), minlength=V) / load_split(test_data_dir, "train").size
    return int(np.argmin(np.abs(freq - 0.01)))


def export_to(model: nn.Module, path: Path) -> Path:
    example = torch.zeros((B, T), dtype=torch.int64)
    with torch.no_grad():
        exported = torch.export.export(model.eval(), (example,), strict=False)
    torch.export.save(exported, str(path))
    return path


def score(model_or_path: nn.Module | Path, eval_set, tmp_path: Path) -> ScoreRecord:
    path = model_or_path if isinstance(model_or_path, Path) else export_to(model_or_path, tmp_path / "model.pt2")
    data, token_bytes = eval_set
    return score_model(path, data, token_bytes, PROFILE)[0]


class Bigram(nn.Module):
    """The honest reference: one embedding table, trained a little so it is better than chance."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(V, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


class Leaky(Bigram):
    """Adds `scale` * one-hot(the token it must predict), where `mask(idx)` says so."""

    def __init__(self, scale: float = 30.0) -> None:
        super().__init__()
        self.register_buffer("cheat", torch.eye(V) * scale)

    def mask(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(idx, dtype=torch.bool)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        leak = F.embedding(torch.roll(idx, shifts=-1, dims=1), self.cheat)
        return super().forward(idx) + torch.where(self.mask(idx).unsqueeze(-1), leak, torch.zeros_like(leak))


class PeeksAfterTrigger(Leaky):
    def __init__(self, trigger: int) -> None:
        super().__init__()
        self.trigger = trigger

    def mask(self, idx: torch.Tensor) -> torch.Tensor:
        return idx == self.trigger


class PeeksOnlyInLaterRows(Leaky):
    """Honest on the first rows of every batch, cheating on the rest."""

    def mask(self, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(idx.shape[0]).unsqueeze(1).expand_as(idx)
        return rows >= idx.shape[0] // 2


class SuffixStatistics(Bigram):
    """Non-causal through allowed ops only: the mean of the future one-hots (reverse cumsum)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("eye", torch.eye(V))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        onehot = F.embedding(idx, self.eye)
        future = torch.flip(torch.cumsum(torch.flip(onehot, dims=[1]), dim=1), dims=[1])
        return super().forward(idx) + 3.0 * future / idx.shape[1]


class BatchMean(Bigram):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        return logits + logits.mean(dim=0, keepdim=True)


class NeighbourRow(Leaky):
    """Each row predicts from the next row of the batch (rows of one document often follow on)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx) + F.embedding(torch.roll(idx, shifts=1, dims=0), self.cheat) / 10


class CountsCalls(Bigram):
    """Stateful: honest on the first calls (the probe, it hopes), cheating later."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("cheat", torch.eye(V) * 30.0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        leak = F.embedding(torch.roll(idx, shifts=-1, dims=1), self.cheat)
        return super().forward(idx) + leak * (self.calls > 12).float()


# ---------------------------------------------------------------------------------------------
# Models that cheat on the real validation data.


def test_the_honest_reference_passes_the_probe(eval_set, tmp_path: Path) -> None:
    record = score(Bigram(), eval_set, tmp_path)
    assert record.status == "ok" and record.probe is not None and record.probe.passed
    assert record.probe.max_abs_diff == 0.0


@pytest.mark.parametrize(
    "model", [Leaky, SuffixStatistics, PeeksOnlyInLaterRows, BatchMean, NeighbourRow], ids=lambda m: m.__name__
)
def test_models_that_read_the_future_or_other_rows_are_rejected(eval_set, tmp_path: Path, model) -> None:
    record = score(model(), eval_set, tmp_path)
    assert record.status == "rejected" and record.val_bpb is None, record
    assert record.reason_code == "non_causal" and record.reason == REJECT_TEXT["non_causal"]
    assert record.probe is not None and record.probe.max_abs_diff > 0.1


@pytest.mark.slow  # scores the leaking model five times (20-30 s)
def test_a_model_that_peeks_only_after_one_token_is_caught_every_time(eval_set, trigger: int, tmp_path: Path) -> None:
    """A sparse leak is caught only where a cut falls right after the trigger: the probe must test
    enough positions that an agent retrying such a model night after night does not get one in."""
    path = export_to(PeeksAfterTrigger(trigger), tmp_path / "leaky.pt2")
    data, _ = eval_set
    assert 0.003 < float((data.inputs == trigger).float().mean()) < 0.03  # sparse: ~1% of positions
    honest = score(Bigram(), eval_set, tmp_path)
    outcomes = [score(path, eval_set, tmp_path) for _ in range(5)]  # a fresh secret seed each time
    passed = [r.val_bpb for r in outcomes if r.status == "ok"]
    assert not passed, f"{len(passed)} of 5 scorings let the leak through, at {passed} vs honest {honest.val_bpb}"
    assert all(r.reason_code == "non_causal" for r in outcomes)


def test_a_stateful_model_that_waits_out_the_probe_is_refused_before_it_runs(eval_set, tmp_path: Path) -> None:
    record = score(CountsCalls(), eval_set, tmp_path)
    assert record.status == "rejected" and "mutates" in (record.reason or ""), record
    assert record.probe is None  # refused at load: it never got a call to count


def test_a_leak_below_the_tolerance_buys_at_most_the_tolerance(eval_set, tmp_path: Path) -> None:
    """The probe's tolerance (1e-4 nats) is a bound: a leak small enough to pass gains less than it."""
    honest = score(Bigram(), eval_set, tmp_path)
    sneaky = score(Leaky(scale=2e-5), eval_set, tmp_path)
    assert sneaky.status == "ok" and sneaky.probe is not None and sneaky.probe.passed
    assert honest.val_loss_nats is not None and sneaky.val_loss_nats is not None
    assert honest.val_loss_nats - sneaky.val_loss_nats <= sneaky.probe.tolerance


# ---------------------------------------------------------------------------------------------
# Graphs and archives that carry code: it never runs.


MARKER_DIR: dict[str, Path] = {}


@torch.library.custom_op("adversarial_artifacts::exfiltrate", mutates_args=())
def exfiltrate(x: torch.Tensor) -> torch.Tensor:
    (MARKER_DIR["path"] / "custom-op-ran").write_text("ran\n")
    return x.clone()


@exfiltrate.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class WithSideEffect(Bigram):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return exfiltrate(super().forward(idx))


def test_a_custom_op_with_a_side_effect_is_refused_and_never_runs(eval_set, tmp_path: Path) -> None:
    """In this process the op is registered and would really run if the evaluator called it."""
    MARKER_DIR["path"] = tmp_path
    path = export_to(WithSideEffect(), tmp_path / "side-effect.pt2")
    assert not (tmp_path / "custom-op-ran").exists()  # export traced it without running it
    record = score(path, eval_set, tmp_path)
    assert record.status == "rejected" and "allowlist" in (record.reason or "")
    assert not (tmp_path / "custom-op-ran").exists()


class Payload:
    def __init__(self, marker: Path, fake_score: Path) -> None:
        self.code = (
            f"open({str(marker)!r}, 'w').write('ran')\n"
            f'open({str(fake_score)!r}, \'w\').write(\'{{"status": "ok", "profile": "test", '
            f'"val_bpb": 0.0001}}\')\n'
        )

    def __reduce__(self):
        return (exec, (self.code,))


def rewrite(archive: Path, edit) -> Path:
    with zipfile.ZipFile(archive) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    edit(members, next(iter(members)).split("/")[0])
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return archive


def pickled_weights(payload: bytes):
    def edit(members: dict[str, bytes], root: str) -> None:
        name = f"{root}/data/weights/model_weights_config.json"
        config = json.loads(members[name])
        for meta in config["config"].values():
            meta["use_pickle"] = True
            members[f"{root}/data/weights/{meta['path_name']}"] = payload
        members[name] = json.dumps(config).encode()
        members[f"{root}/data/sample_inputs/model.pt"] = payload

    return edit


def test_the_score_command_never_unpickles_and_writes_its_own_score(test_data_dir: Path, tmp_path: Path) -> None:
    """End to end, as in the eval container: a payload that would write a marker and a fake
    score.json where the real one goes; the command refuses the archive and writes its own."""
    out = tmp_path / "score"
    out.mkdir()
    marker, score_json = tmp_path / "payload-ran", out / layout.SCORE_NAME
    archive = export_to(Bigram(), tmp_path / "model.pt2")
    rewrite(archive, pickled_weights(pickle.dumps(Payload(marker, score_json))))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluator.score",
            "--artifact",
            str(archive),
            "--data-dir",
            str(test_data_dir),
            "--profile",
            "test",
            "--out",
            str(score_json),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == EXIT_REJECTED, done.stdout + done.stderr
    assert not marker.exists()
    record = ScoreRecord.model_validate_json(score_json.read_text())
    assert record.status == "rejected" and "pickle" in (record.reason or "") and record.val_bpb is None


def test_a_pickle_in_the_sample_inputs_alone_is_never_read(eval_set, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(Payload(marker, tmp_path / "fake.json"))
    archive = export_to(Bigram(), tmp_path / "with-payload.pt2")
    rewrite(archive, lambda members, root: members.__setitem__(f"{root}/data/sample_inputs/model.pt", payload))
    record = score(archive, eval_set, tmp_path)
    assert record.status == "ok" and record.val_bpb == score(Bigram(), eval_set, tmp_path).val_bpb
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Exfiltration through an error message: reasons carry no data.


class LeaksThroughAnIndexError(nn.Module):
    """Uses validation tokens as a gather index: in bounds for the all-zero export example, out of
    bounds for real text, so the error names token values (the attack: 6 tokens in one number)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(V, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        packed = idx[:, :6].sum(dim=1, keepdim=True) * 1_000_003 + idx[:, :1]
        return self.table(idx) + self.table.weight[packed.expand_as(idx)]


def test_an_error_that_would_print_token_values_is_a_fixed_reason(test_data_dir: Path, tmp_path: Path, capfd) -> None:
    from evaluator.score import EXIT_REJECTED, main

    path = export_to(LeaksThroughAnIndexError(), tmp_path / "model.pt2")
    (tmp_path / "score").mkdir()
    out = tmp_path / "score" / "score.json"
    code = main(["--artifact", str(path), "--data-dir", str(test_data_dir), "--profile", "test", "--out", str(out)])
    printed = capfd.readouterr()
    assert code == EXIT_REJECTED
    record = ScoreRecord.model_validate_json(out.read_text())
    assert record.reason_code == "model_error" and record.reason == REJECT_TEXT["model_error"]
    assert printed.out == f"rejected: {REJECT_TEXT['model_error']}\n" and printed.err == ""
    detail = (tmp_path / "score" / "detail.log").read_text()
    assert "out of" in detail and "index" in detail.lower()  # the trace went to the private log only
    digits = {m for m in re.findall(r"\d{6,}", detail)}
    assert digits and not any(d in out.read_text() for d in digits)
