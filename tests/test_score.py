"""Scoring: exact cross-entropy in bits per byte over the fixed eval tokens, refusals with a reason,
score.json written atomically, and the `python -m evaluator.score` exit codes."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluator import layout
from evaluator.probe import ProbeConfig
from evaluator.profiles import get_profile
from evaluator.records import REJECT_TEXT, ScoreRecord
from evaluator.score import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_SETUP,
    EvalTensors,
    eval_tensors,
    main,
    score_model,
    token_byte_table,
    write_score,
)

PROFILE = dataclasses.replace(
    get_profile("test"), name="tiny", seq_len=16, eval_batch_size=4, eval_tokens=3 * 4 * 16, vocab_size=64
)
BOS = 0


def make_data(seed: int = 0) -> tuple[EvalTensors, torch.Tensor, np.ndarray]:
    """Random eval rows with BOS tokens mixed in; token byte lengths 1..6, 0 for BOS."""
    rng = np.random.default_rng(seed)
    B, T, V = PROFILE.eval_batch_size, PROFILE.seq_len, PROFILE.vocab_size
    n = PROFILE.eval_batches
    stream = rng.integers(1, V, size=(n + 2) * B * (T + 1))
    stream[rng.random(stream.size) < 0.1] = BOS
    rows = stream.reshape(n + 2, B, T + 1)
    lengths = rng.integers(1, 7, size=V).astype(np.int32)
    lengths[BOS] = 0
    data = eval_tensors(rows[:n, :, :-1], rows[:n, :, 1:], rows[n:, :, :-1], PROFILE)
    return data, token_byte_table(lengths, V), lengths


def export_to(model: nn.Module, path: Path, profile=PROFILE) -> Path:
    example = torch.zeros((profile.eval_batch_size, profile.seq_len), dtype=torch.int64)
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (example,), strict=False)
    torch.export.save(ep, str(path))
    return path


class Uniform(nn.Module):
    def __init__(self, vocab: int = PROFILE.vocab_size) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return (idx.unsqueeze(-1) * 0).float().expand(-1, -1, self.vocab)


class NaNLogits(Uniform):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) + torch.full((1,), float("nan"))


# --- a small honest GPT: rotary, RMSNorm, QK-norm, causal SDPA, ReLU^2 --------------------------


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], -1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.out = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        Bx, Tx, Cx = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (Cx,))).view(Bx, Tx, 3, self.heads, Cx // self.heads).unbind(2)
        q, k = F.rms_norm(rotary(q, cos, sin), (q.size(-1),)), F.rms_norm(rotary(k, cos, sin), (k.size(-1),))
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.causal
        )
        x = x + self.proj(y.transpose(1, 2).reshape(Bx, Tx, Cx))
        return x + self.out(F.relu(self.fc(F.rms_norm(x, (Cx,)))).square())


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = PROFILE.vocab_size, seq_len: int = PROFILE.seq_len, causal: bool = True) -> None:
        super().__init__()
        dim, heads, layers = 32, 4, 2
        self.wte = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, causal) for _ in range(layers))
        self.head = nn.Linear(dim, vocab, bias=False)
        half = dim // heads // 2
        freqs = torch.outer(torch.arange(seq_len).float(), 1.0 / 10000 ** (torch.arange(half).float() / half))
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(self.wte(idx), (self.wte.embedding_dim,))
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return self.head(F.rms_norm(x, (x.size(-1),))).float()


def expected_uniform_bpb(targets: np.ndarray, lengths: np.ndarray, vocab: int) -> tuple[float, int, int]:
    """Independent arithmetic: every scored target costs ln(V) nats."""
    byte_lengths = lengths[targets.reshape(-1)]
    scored = int((byte_lengths > 0).sum())
    total_bytes = int(byte_lengths.sum())
    return scored * math.log(vocab) / (math.log(2) * total_bytes), scored, total_bytes


# --- scoring -------------------------------------------------------------------------------------


def test_uniform_logits_score_exactly_log_vocab_per_scored_byte(tmp_path):
    data, table, lengths = make_data()
    record, rows = score_model(export_to(Uniform(), tmp_path / "model.pt2"), data, table, PROFILE)
    want, scored, total_bytes = expected_uniform_bpb(data.targets.numpy(), lengths, PROFILE.vocab_size)
    assert record.status == "ok", record.reason
    assert rows is not None and len(rows.nats) == PROFILE.eval_rows  # per-row totals add up to the record
    assert (int(rows.tokens.sum()), int(rows.bytes.sum())) == (record.tokens, record.bytes)
    assert rows.nats.sum() / (math.log(2) * rows.bytes.sum()) == pytest.approx(record.val_bpb, rel=1e-12)
    assert record.tokens == scored < PROFILE.eval_tokens  # BOS targets were in the data and left out
    assert record.bytes == total_bytes
    assert record.val_bpb == pytest.approx(want, rel=1e-6)
    assert record.val_loss_nats == pytest.approx(math.log(PROFILE.vocab_size), rel=1e-6)
    assert record.probe is not None and record.probe.passed
    assert record.artifact_sha256 and len(record.artifact_sha256) == 64


def test_honest_tiny_gpt_passes_the_probe_and_scores_its_true_cross_entropy(tmp_path):
    torch.manual_seed(0)
    model = TinyGPT().eval()
    data, table, lengths = make_data(seed=1)
    record, _ = score_model(
        export_to(model, tmp_path / "model.pt2"), data, table, PROFILE, probe_config=ProbeConfig(forwards=6, batches=3)
    )
    assert record.status == "ok", record.reason
    assert record.probe.passed and record.probe.checks == 6
    assert record.probe.positions == 6 * PROFILE.eval_batch_size
    assert record.forwards == PROFILE.eval_batches + 6  # the bases are the scoring forwards themselves
    with torch.no_grad():
        logits = torch.cat([model(x) for x in data.inputs])
    nll = F.cross_entropy(logits.reshape(-1, PROFILE.vocab_size), data.targets.reshape(-1), reduction="none").double()
    mask = torch.as_tensor(lengths)[data.targets.reshape(-1)] > 0
    want = nll[mask].sum().item() / (math.log(2) * lengths[data.targets.numpy().reshape(-1)].sum())
    assert math.isfinite(record.val_bpb)
    assert record.val_bpb == pytest.approx(want, rel=1e-5)
    assert record.val_bpb < math.log2(PROFILE.vocab_size) * record.tokens / record.bytes * 1.5  # sane size


def test_full_attention_gpt_is_refused_by_the_probe(tmp_path):
    torch.manual_seed(0)
    data, table, _ = make_data(seed=2)
    record, rows = score_model(export_to(TinyGPT(causal=False), tmp_path / "model.pt2"), data, table, PROFILE)
    assert record.status == "rejected" and rows is None
    assert record.val_bpb is None
    assert record.reason_code == "non_causal" and record.reason == REJECT_TEXT["non_causal"]
    assert record.probe is not None and not record.probe.passed


def test_nan_logits_are_refused(tmp_path):
    data, table, _ = make_data()
    record, _ = score_model(export_to(NaNLogits(), tmp_path / "model.pt2"), data, table, PROFILE)
    assert record.status == "rejected"
    assert record.reason_code == "bad_logits" and record.reason == REJECT_TEXT["bad_logits"]


def test_logits_of_the_wrong_vocabulary_are_refused(tmp_path):
    data, table, _ = make_data()
    record, _ = score_model(
        export_to(Uniform(vocab=PROFILE.vocab_size + 1), tmp_path / "model.pt2"), data, table, PROFILE
    )
    assert record.status == "rejected"
    assert record.reason_code == "bad_logits" and record.reason == REJECT_TEXT["bad_logits"]


def test_refused_artifact_gets_a_reason_and_its_hash(tmp_path):
    class Random(Uniform):
        def forward(self, idx):
            return super().forward(idx) + torch.rand(1)

    data, table, _ = make_data()
    record, _ = score_model(export_to(Random(), tmp_path / "model.pt2"), data, table, PROFILE)
    assert record.status == "rejected" and record.reason_code == "graph"
    assert "aten.rand" in record.reason and "allowlist" in record.reason
    assert record.artifact_sha256 and len(record.artifact_sha256) == 64
    assert record.probe is None


def test_eval_data_of_the_wrong_size_is_a_setup_error():
    data, _, _ = make_data()
    from evaluator.score import SetupError

    with pytest.raises(SetupError, match="shape"):
        eval_tensors(data.inputs[:2], data.targets[:2], data.spare, PROFILE)
    with pytest.raises(SetupError, match="vocabulary"):
        eval_tensors(data.inputs, data.targets + PROFILE.vocab_size, data.spare, PROFILE)
    with pytest.raises(SetupError, match="token byte table"):
        token_byte_table(np.ones(PROFILE.vocab_size - 1, dtype=np.int32), PROFILE.vocab_size)


def test_score_json_is_written_atomically_and_reads_back(tmp_path):
    out = tmp_path / "score.json"
    out.write_text("old")
    record = ScoreRecord(status="rejected", reason="test", profile="tiny")
    write_score(record, out)
    assert ScoreRecord.model_validate_json(out.read_text()) == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["score.json"]  # no temp file left behind


# --- the command line, on a prepared `test` data dir ------------------------------------------


@pytest.fixture(scope="module")
def uniform_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    profile = get_profile("test")
    return export_to(Uniform(profile.vocab_size), tmp_path_factory.mktemp("art") / "model.pt2", profile)


def cli(artifact: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--artifact", str(artifact), "--data-dir", str(data_dir), "--profile", "test", "--out", str(out), *extra]


def test_cli_scores_a_model_and_records_the_data_identity(test_data_dir, uniform_artifact, tmp_path):
    from evaluator.dataloader import eval_data
    from evaluator.manifest import manifest_sha256
    from evaluator.tokenizer import load_token_bytes

    out = tmp_path / "score.json"
    proc = subprocess.run(
        [sys.executable, "-m", "evaluator.score", *cli(uniform_artifact, test_data_dir, out)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "val_bpb:" in proc.stdout
    record = ScoreRecord.model_validate_json(out.read_text())
    profile = get_profile("test")
    targets = eval_data(test_data_dir, profile).targets
    want, scored, total_bytes = expected_uniform_bpb(targets, load_token_bytes(test_data_dir), profile.vocab_size)
    assert targets.size == profile.eval_tokens
    assert (record.status, record.tokens, record.bytes) == ("ok", scored, total_bytes)
    assert record.val_bpb == pytest.approx(want, rel=1e-6)
    assert record.manifest_sha256 == manifest_sha256(test_data_dir)
    assert record.eval_seconds > 0
    lines = proc.stdout.splitlines()  # eval.log: fixed lines only
    assert [line.split(":")[0] for line in lines] == [
        "val_bpb",
        "val_loss_nats",
        "tokens",
        "bytes",
        "probe_positions",
        "forwards",
    ]
    assert (out.parent / "detail.log").is_file()  # everything else went to the private detail log


def test_cli_refusal_writes_a_rejected_score_and_exits_3(test_data_dir, uniform_artifact, tmp_path, capfd):
    link = tmp_path / "model.pt2"
    link.symlink_to(uniform_artifact)
    out = tmp_path / "score.json"
    assert main(cli(link, test_data_dir, out)) == EXIT_REJECTED
    record = ScoreRecord.model_validate_json(out.read_text())
    assert record.status == "rejected" and "symlink" in record.reason
    assert "rejected:" in capfd.readouterr().out


def test_cli_missing_data_is_a_setup_error_with_one_line(uniform_artifact, tmp_path, capfd):
    out = tmp_path / "score.json"
    assert main(cli(uniform_artifact, tmp_path / "nowhere", out)) == EXIT_SETUP
    err = capfd.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "make prepare" in err
    assert not out.exists()


def test_cli_corrupted_eval_rows_fail_the_manifest_check(test_data_dir, uniform_artifact, tmp_path, capfd):
    data = tmp_path / "data"
    shutil.copytree(test_data_dir, data)
    rows = data / layout.EVAL_SCORED
    raw = bytearray(rows.read_bytes())
    raw[100] ^= 0xFF
    rows.write_bytes(bytes(raw))
    out = tmp_path / "score.json"
    assert main(cli(uniform_artifact, data, out)) == EXIT_SETUP
    err = capfd.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert not out.exists()


def test_cli_unknown_profile_is_a_setup_error(test_data_dir, uniform_artifact, tmp_path, capfd):
    args = cli(uniform_artifact, test_data_dir, tmp_path / "score.json")
    args[args.index("test")] = "huge"
    assert main(args) == EXIT_SETUP
    assert "unknown profile" in capfd.readouterr().err
