"""The CPU preflight (sandbox.preflight, evaluator.preflight): a proposal's train.py runs for two
steps in one locked-down CPU container, then the evaluator's artifact checks and the causality
probe on train rows; a crash, a missing export, a refused op or a non-causal model stops the
proposal before it takes a slot, and the loop records that stop.

Docker tests. The image is the session's evaluator image (the `images` fixture), or the one named
by OVERNIGHT_TEST_IMAGE (a prefixed build, e.g. h13pre-evaluator:latest, when the shared tags must
not be rebuilt). Run under `flock /tmp/overnight-docker.lock`."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import docker
import pytest
from controller_fakes import HangObserver, ScriptedAgent, make_repo
from rich.console import Console
from sandbox_support import rid, script

from evaluator.profiles import PROFILES, get_profile, preflight_profile
from evaluator.records import ScoreRecord
from sandbox.docker_runner import DockerRunner
from sandbox.errors import SandboxError
from sandbox.preflight import SandboxPreflight
from sandbox.result import ExperimentResult, ExperimentSpec
from sandbox.specs import LABEL_RUN

docker_test = pytest.mark.docker

TINY_MODEL = """
import torch
import torch.nn as nn

from evaluator import run_context, submit

PROFILE = run_context().profile


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(PROFILE.vocab_size, PROFILE.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx)
"""

CRASHES = """
print("step 0 | loss 6.2", flush=True)
raise RuntimeError("a made-up crash in the first step")
"""

NO_EXPORT = (
    TINY_MODEL
    + """
model = Bigram()
print("trained, but forgot to submit", flush=True)
"""
)

REFUSED_OP = (
    TINY_MODEL
    + """
@torch.library.custom_op("proposal::scale", mutates_args=())
def scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@scale.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(Bigram):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return scale(self.emb(idx))


submit(WithCustomOp())
"""
)

NON_CAUSAL = (
    TINY_MODEL
    + """
class PeeksAhead(Bigram):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(torch.roll(idx, shifts=-1, dims=1))  # position t sees token t+1


submit(PeeksAhead())
"""
)

WAITS = """
import time

time.sleep(8)
"""


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    named = os.environ.get("OVERNIGHT_TEST_IMAGE")
    if named:
        request.getfixturevalue("docker_client")
        return named
    return str(request.getfixturevalue("images"))


@pytest.fixture(scope="module")
def preflight() -> SandboxPreflight:
    return SandboxPreflight(DockerRunner())


def spec(tmp_path: Path, train_py: Path, data_dir: Path, image: str, name: str) -> ExperimentSpec:
    return ExperimentSpec(
        run_id=rid(name),
        train_py=train_py,
        run_dir=tmp_path / "run",
        profile="test",
        data_dir=data_dir,
        image=image,
        memory_limit_gb=1.0,
    )


def test_preflight_profiles_keep_the_nights_shapes_and_take_two_steps() -> None:
    for night in PROFILES.values():
        pre = get_profile(night.name + "-preflight")
        assert pre == preflight_profile(night)
        assert (pre.seq_len, pre.vocab_size, pre.eval_batch_size) == (
            night.seq_len,
            night.vocab_size,
            night.eval_batch_size,
        )
        assert pre.max_steps == 2 and pre.eval_batches == 1
        assert pre.time_budget_s <= max(20.0, 0.1 * night.time_budget_s)


@docker_test
def test_the_seed_passes_the_preflight(
    tmp_path: Path, seed_train_py: Path, test_data_dir: Path, image: str, preflight: SandboxPreflight
) -> None:
    verdict = preflight.check(spec(tmp_path, seed_train_py, test_data_dir, image, "pf-seed"))
    assert verdict.record is not None, verdict.note
    assert verdict.record.status == "ok", verdict.record.reason
    assert verdict.record.probe is not None and verdict.record.probe.passed and verdict.record.probe.checks == 2
    log = (tmp_path / "run" / "preflight.log").read_text()
    assert "profile test-preflight" in log and "preflight: ok" in log


@docker_test
@pytest.mark.parametrize(
    ("name", "source", "status", "code", "words"),
    [
        ("crash", CRASHES, "crash", "train_exit", "train.py exited with code 1: RuntimeError: a made-up crash"),
        ("no-export", NO_EXPORT, "crash", "no_model", "without calling submit(model)"),
        ("refused-op", REFUSED_OP, "rejected", "graph", "torch.ops.proposal.scale"),
        ("non-causal", NON_CAUSAL, "rejected", "non_causal", "causality probe"),
    ],
    ids=["crash", "no-export", "refused-op", "non-causal"],
)
def test_a_broken_proposal_is_stopped_by_the_preflight(
    tmp_path: Path,
    test_data_dir: Path,
    image: str,
    preflight: SandboxPreflight,
    name: str,
    source: str,
    status: str,
    code: str,
    words: str,
) -> None:
    train_py = script(tmp_path, source)
    result = preflight(spec(tmp_path, train_py, test_data_dir, image, f"pf-{name}"))
    assert result is not None
    assert result.status == status
    assert result.reason is not None and result.reason.startswith("CPU preflight: ") and words in result.reason
    log = (tmp_path / "run" / "preflight.log").read_text()
    assert f"preflight: {status}" in log
    assert not (tmp_path / "run" / "train.log").exists()  # no slot run: nothing but the preflight ran
    assert preflight.last is not None and preflight.last.record is not None
    assert preflight.last.record.reason_code == code


@docker_test
def test_the_preflight_container_sees_the_train_split_but_never_val_or_eval(
    tmp_path: Path, test_data_dir: Path, image: str, preflight: SandboxPreflight
) -> None:
    the_spec = spec(tmp_path, script(tmp_path, WAITS), test_data_dir, image, "pf-mounts")
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(verdict=preflight.check(the_spec)), daemon=True)
    thread.start()
    client = docker.from_env()
    mounts: list[dict] = []
    deadline = time.monotonic() + 60
    while not mounts and time.monotonic() < deadline:
        for container in client.containers.list(filters={"label": f"{LABEL_RUN}={the_spec.run_id}"}):
            if container.name.endswith("-train"):
                mounts = container.attrs["Mounts"]
        time.sleep(0.2)
    thread.join(120)
    assert mounts, "the preflight container was never seen"
    targets = {m["Destination"]: m for m in mounts}
    assert {"/data/train", "/data/tokenizer", "/data/manifest.json", "/work/train.py", "/out"} <= set(targets)
    assert not [t for t in targets if t.startswith(("/data/val", "/data/eval"))]
    assert not [m for m in mounts if "/val" in m.get("Source", "") or "/eval" in m.get("Source", "")]
    assert all(not m["RW"] for t, m in targets.items() if t != "/out")
    verdict = box["verdict"]
    assert verdict.record is not None and verdict.record.reason_code == "no_model"  # type: ignore[attr-defined]


class Cluster:
    name = "kubernetes"


def test_the_kubernetes_backend_is_refused_with_a_clear_line() -> None:
    with pytest.raises(SandboxError, match="docker backend only.*--preflight false"):
        SandboxPreflight(Cluster())  # type: ignore[arg-type]


def test_the_night_gets_a_preflight_when_it_is_on_and_says_why_when_it_cannot(tmp_path: Path) -> None:
    from controller.cli import UserError, make_preflight
    from controller.settings import load_settings

    console = Console(file=io.StringIO(), width=200)
    docker_backend = DockerRunner()
    assert make_preflight(load_settings(profile="cpu"), docker_backend, console) is None  # off by default on cpu
    assert isinstance(make_preflight(load_settings(profile="gpu"), docker_backend, console), SandboxPreflight)
    assert isinstance(
        make_preflight(load_settings(profile="cpu", preflight=True), docker_backend, console), SandboxPreflight
    )
    assert make_preflight(load_settings(profile="gpu", preflight=False), docker_backend, console) is None
    assert make_preflight(load_settings(profile="gpu"), Cluster(), console) is None  # on by default: said, off
    assert "preflight off: the CPU preflight runs on the docker backend only" in console.file.getvalue()
    with pytest.raises(UserError, match="docker backend only"):
        make_preflight(load_settings(profile="gpu", preflight=True), Cluster(), console)
    with pytest.raises(UserError, match="not bare processes"):
        make_preflight(load_settings(profile="cpu", preflight=True), None, console)


@docker_test
def test_the_loop_records_a_preflight_stop_without_a_slot_run(
    tmp_path: Path, test_data_dir: Path, image: str, preflight: SandboxPreflight
) -> None:
    from controller.ledger import Ledger
    from controller.loop import LoopDeps, NightLoop
    from controller.settings import load_settings
    from evaluator.manifest import manifest_sha256

    repo = make_repo(tmp_path, NON_CAUSAL)
    slot_runs: list[ExperimentSpec] = []

    def slot_runner(the_spec: ExperimentSpec):  # type: ignore[no-untyped-def]
        slot_runs.append(the_spec)
        raise AssertionError("a proposal stopped by the preflight took a slot")

    settings = load_settings(
        tag=f"pf{rid('')[1:]}",
        profile="test",
        agent="search",
        repo=repo,
        runs_dir=repo / "runs",
        worktrees_dir=repo / "worktrees",
        data_dir=test_data_dir,
        image=image,
        max_experiments=1,
        overlap=False,
        preflight=True,
        memory_limit_gb=1.0,
    )
    # The baseline is never preflighted; this runner gives it a canned score (a slot run of its
    # own is sandbox_e2e's subject) and fails the test if anything else reaches a slot.

    def runner(the_spec: ExperimentSpec) -> ExperimentResult:
        if the_spec.labels.get("overnight.experiment") == "0":
            Path(the_spec.run_dir).mkdir(parents=True, exist_ok=True)
            return ExperimentResult(
                status="ok",
                run_dir=the_spec.run_dir,
                score=ScoreRecord(status="ok", profile="test", val_bpb=3.0, tokens=100, bytes=400),
            )
        return slot_runner(the_spec)

    agent = ScriptedAgent({1: {"append": "# peeks ahead", "desc": "peek at the next token"}})
    observer = HangObserver()
    deps = LoopDeps(
        agent=agent,
        runner=runner,
        observer=observer,
        sleep=lambda s: None,
        manifest_sha256=manifest_sha256(test_data_dir),
        preflight=preflight,
    )
    summary = NightLoop(settings, deps).run()
    assert not slot_runs
    ledger = Ledger(settings.tag_dir)
    rows = ledger.rows()
    assert [r.n for r in rows] == [0, 1]
    record = ledger.read_record(1, rows[1].commit)
    assert record is not None and record.status != "keep"
    assert record.reason is not None and "CPU preflight: causality probe" in record.reason
    assert [(run.preflight, run.status) for run in record.replicates] == [(True, "rejected")]
    assert any("stopped by the preflight" in m for m in observer.messages)
    assert (ledger.run_dir(1, record.commit) / "preflight.log").is_file()
    assert summary.reason == "max-experiments"
