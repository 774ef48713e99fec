"""End to end with the real Docker engine: `python -m controller overnight` on the `test` profile,
the real sandbox (two containers per experiment), real git, the `search` agent (optuna) and the
`anthropic` agent (the real client against the fake Messages API on loopback).

train.py here is a tiny model (an embedding and a linear head) so an experiment takes seconds;
the seed programs/default/train.py is covered by test_sandbox_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from controller_fakes import REPO_ROOT, check_consistent, make_repo
from fake_anthropic import FakeAnthropic, Reply, overloaded, rate_limited, tool_use

from controller import git as g
from controller.ledger import Ledger

pytestmark = pytest.mark.docker

TINY_TRAIN_PY = '''"""A tiny train.py for the controller's end-to-end tests: an embedding and a linear head."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluator import run_context, submit, train_batches

LR = 0.003  # Adam learning rate
EMBED_DIM = 32  # model width
BATCH_SIZE = 8  # rows per step

context = run_context()
PROFILE = context.profile
torch.manual_seed(context.seed)
torch.set_num_threads(1)


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(PROFILE.vocab_size, EMBED_DIM)
        self.head = nn.Linear(EMBED_DIM, PROFILE.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(idx))


model = Bigram()
optimizer = torch.optim.Adam(model.parameters(), lr=LR)
batches = train_batches(context.data_dir, BATCH_SIZE, PROFILE.seq_len, seed=context.seed)
for step in range(PROFILE.max_steps or 12):
    inputs, targets, _ = next(batches)
    loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step:03d} loss {loss.item():.4f}", flush=True)
model.eval()
submit(model)
'''

# The search agent searches only the learning rate (the seed's 0.003 is too low for 12 steps).
SEARCH_SPACE = {"derive_others": False, "params": {"LR": {"kind": "float", "low": 0.0003, "high": 0.3, "log": True}}}


def tiny_repo(root: Path) -> Path:
    repo = make_repo(root, TINY_TRAIN_PY)
    (repo / "programs" / "default" / "search_space.json").write_text(json.dumps(SEARCH_SPACE))
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "search space"], cwd=repo, check=True
    )
    return repo


def overnight_cmd(repo: Path, data_dir: Path, tag: str, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "controller",
        "overnight",
        "--tag",
        tag,
        "--profile",
        "test",
        "--data-dir",
        str(data_dir),
        *flags,
    ]


def controller_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVERNIGHT_", "ANTHROPIC_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), COLUMNS="200", **extra)
    return env


def run_overnight(
    repo: Path, data_dir: Path, tag: str, *flags: str, env: dict | None = None, timeout: float = 900
) -> str:
    done = subprocess.run(
        overnight_cmd(repo, data_dir, tag, *flags),
        cwd=repo,
        env=env or controller_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def tag_containers(client: docker.DockerClient, tag: str) -> list:
    return client.containers.list(all=True, filters={"label": f"overnight.tag={tag}"})


@pytest.fixture(scope="module")
def search_night(images, test_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A short night with the search agent: baseline + 3, continued (a resume) until it has at least
    one keep and one discard after the baseline, within 6 experiments."""
    repo = tiny_repo(tmp_path_factory.mktemp("night") / "repo")
    out = run_overnight(repo, test_data_dir, "e2e", "--max-experiments", "3")  # no key: the search agent
    for more in (5, 6):
        statuses = [r.status for r in Ledger(repo / "runs" / "e2e").rows()[1:]]
        if "keep" in statuses and "discard" in statuses:
            break
        out += run_overnight(repo, test_data_dir, "e2e", "--max-experiments", str(more))
    return repo, out


def test_a_short_night_with_the_search_agent(search_night, docker_client) -> None:
    repo, out = search_night
    rows = check_consistent(repo, "e2e")  # refs, branch = baseline + keeps, run folders, clean worktree
    assert 4 <= len(rows) <= 7
    assert rows[0].status == "keep" and rows[0].description == "baseline" and rows[0].val_bpb > 0
    later = [r.status for r in rows[1:]]
    assert "keep" in later and "discard" in later
    assert all(r.description.startswith("LR ") for r in rows[1:])  # the search agent's one-line descriptions
    best = min(r.val_bpb for r in rows if r.scored)
    kept = [r for r in rows if r.status == "keep"]
    assert kept[-1].val_bpb == best and all(a.val_bpb > b.val_bpb for a, b in zip(kept, kept[1:], strict=False))
    assert "agent: search, the offline optuna agent (no ANTHROPIC_API_KEY set" in out
    assert "reached --max-experiments" in out
    ledger = Ledger(repo / "runs" / "e2e")
    refs = g.experiment_refs(repo, "e2e")
    for n, row in enumerate(rows):
        record = ledger.read_record(n, refs[n])
        run_dir = ledger.row_run_dir(n, row)
        assert record.image_id and record.image_id.startswith("sha256:")
        assert record.data_manifest_sha256 and record.profile == "test" and record.agent in ("seed", "search")
        assert (run_dir / "train.log").read_text().count("step ") >= 12
        assert (run_dir / "score.json").exists() == row.scored
        assert record.timings.train > 0 and record.memory_gb > 0
    assert (repo / "runs" / "e2e" / "progress.png").read_bytes()[:4] == b"\x89PNG"
    assert (repo / "runs" / "e2e" / "optuna.db").exists()  # the search agent's study, per tag
    assert tag_containers(docker_client, "e2e") == []
    user_head = subprocess.run(["git", "rev-parse", "main"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert refs[0] == user_head


def test_replay_of_a_discarded_commit_gives_the_same_val_bpb(search_night) -> None:
    repo, _ = search_night
    rows = Ledger(repo / "runs" / "e2e").rows()
    n = next(i for i, r in enumerate(rows) if r.status == "discard")
    done = subprocess.run(
        [sys.executable, "-m", "controller", "replay", rows[n].commit],
        cwd=repo,
        env=controller_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same score: the step budget makes the run deterministic" in done.stdout
    replay_json = next((repo / "runs" / "e2e" / "replays").glob(f"{n:04d}-{rows[n].commit}-*/replay.json"))
    replayed = json.loads(replay_json.read_text())
    assert replayed["status"] == "ok" and replayed["replayed_val_bpb"] == replayed["recorded_val_bpb"]
    assert f"{replayed['recorded_val_bpb']:.6f}" == f"{rows[n].val_bpb:.6f}"


def test_kill_9_mid_experiment_then_resume(images, test_data_dir: Path, tmp_path: Path, docker_client) -> None:
    repo = tiny_repo(tmp_path / "repo")
    cmd = overnight_cmd(repo, test_data_dir, "killed", "--agent", "search", "--max-experiments", "2")
    proc = subprocess.Popen(cmd, cwd=repo, env=controller_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    running = []
    while not running:
        assert proc.poll() is None, "the night ended before experiment 1 started"
        assert time.monotonic() < deadline, "experiment 1 never started"
        running = docker_client.containers.list(
            filters={"label": ["overnight.tag=killed", "overnight.experiment=1"], "status": "running"}
        )
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tag_containers(docker_client, "killed")  # the kill left its container behind
    assert len(Ledger(repo / "runs" / "killed").rows()) == 1

    out = run_overnight(repo, test_data_dir, "killed", "--agent", "search", "--max-experiments", "2")
    assert "resuming experiment 1" in out
    rows = check_consistent(repo, "killed")
    assert len(rows) == 3 and all(r.scored for r in rows)
    assert tag_containers(docker_client, "killed") == []  # no orphan container left
    assert list((repo / "runs" / "killed" / "interrupted").iterdir())  # the half run, kept aside


def edit_and_finish(old: str, new: str, description: str) -> list[Reply]:
    return [
        Reply([tool_use("edit_train_py", {"old_str": old, "new_str": new})]),
        Reply([tool_use("finish", {"description": description})]),
    ]


def test_a_short_night_with_the_anthropic_agent_through_429_and_529(
    images, test_data_dir: Path, tmp_path: Path, docker_client
) -> None:
    repo = tiny_repo(tmp_path / "repo")
    with FakeAnthropic(api_key="test-key") as fake:
        fake.enqueue(
            rate_limited(retry_after="1"),
            *edit_and_finish("LR = 0.003", "LR = 0.03", "LR 0.003 -> 0.03"),
            overloaded(),
            *edit_and_finish("LR = 0.03", "LR = 0.0003", "LR 0.03 -> 0.0003"),
            *edit_and_finish("EMBED_DIM = 32", "EMBED_DIM = 64", "EMBED_DIM 32 -> 64"),
        )
        env = controller_env(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=fake.url)
        # one at a time: the scripted replies assume each proposal starts from the decided best
        out = run_overnight(repo, test_data_dir, "llm", "--max-experiments", "3", "--overlap", "false", env=env)
        assert fake.pending == 0
        requests = fake.message_requests()
    assert "agent: anthropic (ANTHROPIC_API_KEY is set)" in out
    rows = check_consistent(repo, "llm")
    assert [(r.status, r.description) for r in rows[:3]] == [
        ("keep", "baseline"),
        ("keep", "LR 0.003 -> 0.03"),
        ("discard", "LR 0.03 -> 0.0003"),
    ]
    assert rows[3].description == "EMBED_DIM 32 -> 64" and rows[3].scored
    assert len(requests) == 8  # 2 + 1 retry, 2 + 1 retry, 2
    ledger = Ledger(repo / "runs" / "llm")
    refs = g.experiment_refs(repo, "llm")
    records = [ledger.read_record(n, refs[n]) for n in range(4)]
    assert [r.agent for r in records] == ["seed", "anthropic", "anthropic", "anthropic"]
    assert records[1].usage.api_calls >= 2 and records[1].usage.retries >= 1 and records[2].usage.retries >= 1
    usage = records[1].usage
    assert usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens > 0
    assert usage.output_tokens > 0 and usage.cost_usd > 0 and records[1].model
    transcript = json.loads((ledger.row_run_dir(1, rows[1]) / "transcript.json").read_text())
    assert any("edit_train_py" in json.dumps(m) for m in transcript["transcript"])
    assert b"LR = 0.03\n" in g.file_at(repo, refs[3], "programs/default/train.py").replace(b"  #", b"\n#")
    assert tag_containers(docker_client, "llm") == []
    for request in requests:  # no secret or host path of the controller leaks into the prompt
        assert "test-key" not in json.dumps(request.body)
