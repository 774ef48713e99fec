"""A short night on Kubernetes: `python -m controller overnight --backend kubernetes` (the real
CLI, loop, git, ledger and sandbox) against the fake API server on loopback, reached through a
kubeconfig as a user's cluster would be. Only the agent is scripted: its proposals are real
train.py files. The fake cluster's pods are real local processes, so the baseline and the honest
change are really trained and scored by the evaluator, and the run that sleeps past its budget is
really killed at its cap. The prepared `test` data lies only on the cluster's data volume.

Must show (issue 15): experiments recorded, logs streamed, a deadline exceeded recorded as
`timeout`, nothing left behind on the cluster. The host's cap (measured from the container's
start) ends the sleeping run; the Job's activeDeadlineSeconds, later by the start allowance, is
only the API server's backstop for a controller that died (tests/test_k8s_runner.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from controller_fakes import REPO_ROOT, ScriptedAgent, check_consistent, make_repo
from fake_kube_api import FakeKube
from k8s_support import IMAGE, PREPARE

from controller import cli
from controller.ledger import Ledger, LedgerRow
from controller.records import RunRecord
from evaluator.manifest import manifest_sha256
from evaluator.profiles import get_profile

HONEST_SEED = (REPO_ROOT / "tests" / "adversarial" / "honest_seed.py").read_text()
SLEEP_LINE = "sleeping past the budget"
SCRIPT = {
    1: {"set": {"STEPS": 6}, "desc": "train the bigram for 6 steps"},
    2: {
        "replace": [
            "submit(model)",
            f"import time\n\nprint({SLEEP_LINE!r}, flush=True)\ntime.sleep(3600)\nsubmit(model)",
        ],
        "desc": "sleep an hour before submitting",
    },
}
TAG = "kube"
SANDBOX_KINDS = ("jobs", "pods", "persistentvolumeclaims", "configmaps")

# About 80 s on a shared 2-core machine: the third run alone is held to the test profile's cap
# (20 s budget + 5 s export allowance), and each scored run takes ~20 s (train, fetch, eval).
pytestmark = pytest.mark.slow


@dataclass
class Night:
    repo: Path
    kube: FakeKube
    data_dir: Path  # the prepared data, as it lies on the cluster's data volume
    exit_code: int
    output: str
    agent: ScriptedAgent
    claims_before: list[str]  # the PVCs that were there before the night (the data volume)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.repo / "runs" / TAG)

    def rows(self) -> list[LedgerRow]:
        return self.ledger.rows()

    def run_dir(self, n: int) -> Path:
        return self.ledger.row_run_dir(n, self.rows()[n])

    def record(self, n: int) -> RunRecord:
        return RunRecord.model_validate_json((self.run_dir(n) / "run.json").read_text())


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, test_data_dir: Path) -> Iterator[Night]:
    """One night, run once for the module: baseline, an honest change, a run that sleeps past
    its budget. The controller's machine has no prepared data: it is on the cluster only."""
    root = tmp_path_factory.mktemp("k8s-night")
    kube = FakeKube(root / "cluster", image_paths={"/opt/overnight": REPO_ROOT}, images={IMAGE, PREPARE}).start()
    kube.add_claim("overnight-data", test_data_dir.parent)  # <volume>/test, as data/test is named
    kubeconfig = kube.kubeconfig(root / "kubeconfig")
    repo = make_repo(root / "repo", HONEST_SEED)
    agent = ScriptedAgent(SCRIPT)
    claims_before = [c["metadata"]["name"] for c in kube.list("persistentvolumeclaims")]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in list(os.environ):
                if name.startswith("OVERNIGHT_") or name in ("ANTHROPIC_API_KEY", "KUBECONFIG"):
                    mp.delenv(name)
            mp.chdir(repo)
            mp.setattr(cli, "make_agent_for", lambda settings: agent)  # the one fake: the agent
            try:
                code = _overnight(
                    [
                        "overnight",
                        "--tag",
                        TAG,
                        "--profile",
                        "test",
                        "--max-experiments",
                        "2",
                        "--backend",
                        "kubernetes",
                        "--kube-config",
                        str(kubeconfig),
                        "--image-registry",
                        "registry.test",
                    ],
                    root / "console.txt",
                )
            finally:  # the night installs its own Ctrl-C handlers
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
        yield Night(
            repo=repo,
            kube=kube,
            data_dir=test_data_dir,
            exit_code=code,
            output=(root / "console.txt").read_text(),
            agent=agent,
            claims_before=claims_before,
        )
    finally:
        kube.stop()


def _overnight(argv: list[str], console_file: Path) -> int:
    """cli.main with the console written to a file (the module fixture has no capsys)."""
    with console_file.open("w") as out, contextlib.redirect_stdout(out):
        return cli.main(argv)


def test_the_night_records_the_baseline_the_honest_change_and_the_timeout(night: Night) -> None:
    assert night.exit_code == 0, night.output
    rows = check_consistent(night.repo, TAG)  # refs, branch, run folders and run.json agree
    assert [row.status for row in rows] == ["keep", "keep", "timeout"], night.output
    assert [row.description for row in rows] == [
        "baseline",
        "train the bigram for 6 steps",
        "sleep an hour before submitting",
    ]
    baseline, honest, slept = rows
    assert 0 < honest.val_bpb < baseline.val_bpb < 20  # six real optimizer steps beat the initial weights
    assert slept.val_bpb == 0.0
    assert "reached --max-experiments: 3 experiments" in night.output
    assert [(n, status) for n, _, status in night.agent.observed] == [(0, "keep"), (1, "keep"), (2, "timeout")]


def test_the_run_past_its_budget_is_killed_at_its_cap_as_a_timeout(night: Night) -> None:
    record = night.record(2)
    cap = get_profile("test").time_budget_s + get_profile("test").export_allowance_s
    assert record.status == "timeout" and record.val_bpb is None
    assert record.reason is not None and record.reason.startswith(f"killed at {cap:.0f} s")
    assert record.timings.train_cap == cap
    assert cap <= record.timings.train < cap + 10  # killed at the cap, not at its hour of sleep
    assert record.train_exit_code != 0 and record.eval_exit_code is None
    run_dir = night.run_dir(2)
    assert not (run_dir / "score.json").exists() and not (run_dir / "model.pt2").exists()
    assert not (run_dir / "eval.log").exists()  # never scored: no eval job ran


def test_logs_stream_live_into_each_runs_folder(night: Night) -> None:
    for n in (0, 1):
        assert "val_bpb:" in (night.run_dir(n) / "eval.log").read_text()
    assert "step 5 loss" in (night.run_dir(1) / "train.log").read_text()  # the honest run's own lines
    # The killed pod is deleted with its log: this line reached the host only by streaming it live.
    assert SLEEP_LINE in (night.run_dir(2) / "train.log").read_text()


def test_run_json_records_the_cluster_image_and_the_volumes_data(night: Night) -> None:
    identity = manifest_sha256(night.data_dir)
    for n in range(3):
        record = night.record(n)
        assert record.image_id == IMAGE  # the registry reference the cluster pulled
        assert record.data_manifest_sha256 == identity  # checked on the volume by a pod
        assert record.profile == "test" and record.memory_gb == 0.0  # no RAM peak seen on a cluster
        assert record.timings.train > 0
    for n in (0, 1):
        record = night.record(n)
        score = json.loads((night.run_dir(n) / "score.json").read_text())
        assert record.val_bpb == score["val_bpb"] and score["status"] == "ok"
        assert record.train_exit_code == 0 and record.eval_exit_code == 0 and record.timings.eval > 0
    assert not (night.repo / "data").exists()  # nothing prepared on the controller's machine


def test_nothing_is_left_on_the_cluster(night: Night) -> None:
    left = {kind: [o["metadata"]["name"] for o in night.kube.list(kind)] for kind in SANDBOX_KINDS}
    assert left == {"jobs": [], "pods": [], "persistentvolumeclaims": night.claims_before, "configmaps": []}
    assert night.kube.leftovers(f"overnight.tag={TAG}") == []
    assert night.kube.processes == {}
    assert os.listdir(night.kube.claim_dir("overnight-data")) == ["test"]
