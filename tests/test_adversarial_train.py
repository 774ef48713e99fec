"""Hostile train.py files through the real controller, sandbox and evaluator: each attack ends as
tests/adversarial/cases.py says (refused, killed, or scored exactly like the honest seed), and the
ledger, the data, the evaluator, the image and the other runs are unaffected.

All cases run in one night (tests/adversarial/night.py, once per session): a baseline, then one
experiment per case (the probes that only look around share one), then the honest seed again."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from controller_fakes import check_consistent

from controller.ledger import HEADER, REPLICATE_JSON, RUN_JSON
from evaluator.manifest import verify_manifest
from evaluator.records import ScoreRecord
from sandbox import specs
from sandbox.docker_runner import DockerRunner
from sandbox.nvml import VramWatchdog
from sandbox.rundir import RUN_FILES
from sandbox.specs import train_environment
from tests.adversarial.cases import (
    BY_NAME,
    CASES,
    RUNS,
    STATUS_OF,
    VRAM_CASE,
    markdown_table,
    reports,
)
from tests.adversarial.night import (
    CANARY_KEY,
    LIMITS,
    MEMORY_LIMIT_GB,
    TAG,
    NightResult,
)

pytestmark = pytest.mark.docker

GiB = 2**30
TABLE_ENV = "OVERNIGHT_SECURITY_TABLE"  # set to a path to write the observed table (docs/security.md)
OBSERVED: dict[str, str] = {}  # filled by tests that run outside the night (the VRAM case)


def baseline_bpb(adversarial: NightResult) -> float:
    value = adversarial.runs["baseline"].record.val_bpb
    assert value is not None
    return value


def probe_report(adversarial: NightResult, case: str) -> dict:
    found = reports(adversarial.case_run(case).train_log)
    assert case in found, f"no report from {case}: {adversarial.case_run(case).train_log[-2000:]}"
    assert "error" not in found[case], found[case]
    return found[case]


def score_json(run_dir: Path) -> ScoreRecord:
    return ScoreRecord.model_validate_json((run_dir / "score.json").read_text())


def folder_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# ---------------------------------------------------------------------------------------------
# Every case, as the table says; and the night as a whole.


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_each_case_ends_as_the_table_says(adversarial: NightResult, case: str) -> None:
    spec = BY_NAME[case]
    run = adversarial.case_run(case)
    allowed = set().union(*(STATUS_OF[o] for o in spec.outcomes))
    assert run.row.status in allowed, (run.row, run.record.reason)
    assert run.record.status == run.row.status
    if spec.reason is not None:
        assert spec.reason in (run.record.reason or ""), run.record.reason
    if spec.outcome == "honest":
        assert run.record.val_bpb == baseline_bpb(adversarial)  # exactly: the attack changed nothing
        assert run.row.val_bpb == adversarial.runs["baseline"].row.val_bpb
    else:
        assert run.record.val_bpb is None and run.row.val_bpb == 0.0


def test_the_night_keeps_one_row_per_run_and_a_consistent_branch(adversarial: NightResult) -> None:
    rows = check_consistent(adversarial.repo, TAG)
    assert len(rows) == 1 + len(RUNS)
    assert [r.description for r in rows][:3] == ["baseline", "probes", RUNS[1].label]
    lines = (adversarial.tag_dir / "results.tsv").read_text().splitlines()
    assert len(lines) == 1 + len(rows)  # the header, then exactly one line per run


def test_data_evaluator_and_image_are_unchanged(adversarial: NightResult) -> None:
    assert adversarial.fingerprints_after == adversarial.fingerprints_before
    verify_manifest(adversarial.data_dir, ["train", "val"])  # raises if any shard changed


def test_an_earlier_run_folder_is_untouched_by_later_runs(adversarial: NightResult) -> None:
    assert (
        adversarial.baseline_folder_before and adversarial.baseline_folder_after == adversarial.baseline_folder_before
    )


def test_the_honest_seed_after_every_attack_scores_exactly_like_the_baseline(adversarial: NightResult) -> None:
    last = adversarial.runs["leftover_check"]
    assert last.n == len(adversarial.rows) - 1
    assert last.record.val_bpb == baseline_bpb(adversarial)
    assert score_json(last.run_dir).manifest_sha256 == adversarial.runs["baseline"].record.data_manifest_sha256


def test_no_container_is_left_after_the_night(adversarial: NightResult, docker_client) -> None:
    assert docker_client.containers.list(all=True, filters={"label": f"overnight.tag={TAG}"}) == []


# ---------------------------------------------------------------------------------------------
# 1. The score comes only from the eval container.


def test_a_printed_or_written_fake_score_is_not_the_score(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "fake_score_print")
    fake = report["fake_bpb"]
    run = adversarial.case_run("fake_score_print")
    assert f"val_bpb: {fake:.6f}" in run.train_log  # it did print the evaluator's line
    assert report["writes"]["/out/score.json"] == "written"  # and wrote fakes where it could
    assert report["writes"]["/tmp/score.json"] == "written"
    for target in ("/score/score.json", "/out/../score/score.json", "/work/score.json", "/data/score.json"):
        assert report["writes"][target] != "written", target
    recorded = score_json(run.run_dir)
    assert recorded.val_bpb == run.record.val_bpb == baseline_bpb(adversarial) != fake
    assert recorded.manifest_sha256 == adversarial.fingerprints_before["data_manifest"]
    assert recorded.probe is not None and recorded.probe.passed and recorded.probe.checks > 0
    assert f"{fake:.6f}" not in (adversarial.tag_dir / "results.tsv").read_text()
    assert f"val_bpb: {baseline_bpb(adversarial):.6f}" in (run.run_dir / "eval.log").read_text()


def test_monkeypatching_the_evaluator_in_train_py_changes_nothing(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "monkeypatch_evaluator")
    assert report["in_process_patched"] is True  # the patches took, in its own process
    root = report["evaluator_root"]
    for path, outcome in report["writes"].items():
        if path.startswith(root) or "site-packages/zz_evil" in path:
            assert outcome != "written", path
    recorded = score_json(adversarial.case_run("monkeypatch_evaluator").run_dir)
    baseline = score_json(adversarial.runs["baseline"].run_dir)
    assert recorded.probe is not None and baseline.probe is not None
    assert recorded.probe.checks == baseline.probe.checks != 99 and recorded.probe.tolerance == 1e-4
    assert (
        recorded.tokens == score_json(adversarial.runs["baseline"].run_dir).tokens
    )  # the profile's, not the patched one
    assert recorded.val_bpb == baseline_bpb(adversarial)


# ---------------------------------------------------------------------------------------------
# 2. Validation data is never visible to training code.


def test_validation_data_is_not_where_the_layout_says(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "read_val_known_paths")
    assert report["manifest_val_files"]  # it knew the names
    assert report["data_listing"] == ["manifest.json", "tokenizer", "train"]
    assert all(not outcome.startswith("read") for outcome in report["opened"].values()), report["opened"]
    assert report["val_globs"] == ["/data/train/shard_00000.bin"]


def test_searching_the_filesystem_finds_no_validation_text(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "search_val_data")
    assert report["shards"] == ["/data/train/shard_00000.bin"]
    assert report["manifests"] == ["/data/manifest.json"]
    assert report["stdlib_test_files"] == 0, report["stdlib_test_examples"]
    sources = [source for source, _ in report["mounts"]]
    assert not [s for s in sources if "/val" in s], sources


def test_other_processes_are_invisible_from_the_train_container(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "proc_other_processes")
    assert len(report["pids"]) <= 3, report["cmdlines"]
    assert report["host_processes_seen"] == []
    assert all("/work/train.py" in c for c in report["cmdlines"].values()), report["cmdlines"]
    for listing in report["other_root_val"].values():
        assert isinstance(listing, str) and listing.startswith("<"), listing


# ---------------------------------------------------------------------------------------------
# 3 and 9. The evaluator, the data, the images, git and the ledger cannot be written.


def test_writes_to_the_evaluator_data_image_git_and_ledger_are_refused(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "write_everywhere")
    assert {k: v for k, v in report["writes"].items() if v == "ok"} == {}
    assert set(report["markers"].values()) == {"ok"}  # the writable places were really written
    assert report["git_or_ledger_found"] == []


def test_privilege_escalation_is_refused(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "escalate_privileges")
    assert report["uid"] == report["euid"] == 1000
    assert report["cap_eff"] == "0000000000000000" and report["cap_bnd"] == "0000000000000000"
    assert report["no_new_privs"] == "1"
    for attempt in ("setuid0", "unshare_user", "unshare_mount", "mount_tmpfs"):
        assert report[attempt] != "ok", attempt
    assert report["setuid_mount"].get("exit") != 0 and report["setuid_su"].get("exit") != 0


# ---------------------------------------------------------------------------------------------
# 5. No network, no API keys, no Docker socket.


def test_the_environment_holds_no_secret_and_no_host_variable(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "env_secrets")
    # HOSTNAME from the engine; TORCHINDUCTOR_CACHE_DIR is set by torch itself when evaluator imports it
    expected = set(train_environment("test", 0, None, 0.0)) | {"HOSTNAME", "TORCHINDUCTOR_CACHE_DIR"}
    assert set(report["environ_keys"]) == expected
    assert report["secretish_keys"] == []
    assert report["canary_in_environ"] is False and report["canary_in_pid1_environ"] is False
    assert "readable" not in report["credential_files"].values(), report["credential_files"]
    assert report["canary_files"] == []
    assert CANARY_KEY not in adversarial.case_run("env_secrets").train_log


def test_there_is_no_docker_socket_and_no_route_to_the_engine(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "docker_socket")
    assert all(v == "No such file or directory" for v in report["known_paths"].values()), report["known_paths"]
    assert report["unix_sockets"] == []
    assert "connected" not in report["tcp"].values()
    assert report["docker_host_env"] is None


def test_there_is_no_network(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "network")
    assert report["interfaces"] == ["lo"]
    assert set(report["tcp"].values()) == {"Network is unreachable"}
    assert set(report["udp"].values()) == {"Network is unreachable"}
    assert all(v.startswith("<") for v in report["resolve"].values()), report["resolve"]


# ---------------------------------------------------------------------------------------------
# 8 and 11. Non-causal models, row mixing, foreign ops and pickles are rejected.


@pytest.mark.parametrize("case", ["peek_future", "mix_rows", "causal_on_some_inputs"])
def test_non_causal_and_row_mixing_models_fail_the_probe(adversarial: NightResult, case: str) -> None:
    recorded = score_json(adversarial.case_run(case).run_dir)
    assert recorded.status == "rejected" and recorded.val_bpb is None
    assert recorded.probe is not None and not recorded.probe.passed
    assert recorded.probe.max_abs_diff > 1.0  # caught by a wide margin, not by float noise


@pytest.mark.parametrize("case", ["custom_op", "pickle_in_archive"])
def test_code_in_the_artifact_never_runs_in_the_eval_container(adversarial: NightResult, case: str) -> None:
    run = adversarial.case_run(case)
    recorded = score_json(run.run_dir)
    assert recorded.status == "rejected" and recorded.val_bpb is None  # the evaluator's, not the payload's
    assert recorded.reason_code in ("archive", "graph")  # refused at load, before anything ran
    assert run.record.eval_exit_code == 3
    assert "pwned" not in (run.run_dir / "eval-detail.log").read_text()


def test_a_symlinked_artifact_is_refused_by_the_host_without_being_followed(adversarial: NightResult) -> None:
    run = adversarial.case_run("symlink_artifact")
    assert "/val/shard_00000.bin" in run.train_log.split("model.pt2 -> ", 1)[1]  # the attack was real
    assert not (run.run_dir / "model.pt2").exists()  # nothing was copied
    assert run.record.eval_exit_code is None  # no eval container ran


# ---------------------------------------------------------------------------------------------
# 4 and 6. Time is enforced from outside; nothing outlives its run.


@pytest.mark.parametrize(
    "case",
    [
        "train_past_budget",
        "budget_one_line_overrun",
        "budget_untimed_warmup",
        "budget_ignored_steps",
        "clock_tamper",
        "sleep_through_eval",
    ],
)
def test_time_is_enforced_from_outside_the_container(adversarial: NightResult, case: str) -> None:
    run = adversarial.case_run(case)
    assert LIMITS.train_cap_s <= run.record.timings.train < LIMITS.train_cap_s + 5
    assert run.record.timings.train_cap == LIMITS.train_cap_s and run.row.train_s == pytest.approx(
        run.record.timings.train, abs=0.05
    )  # the measured container time is in run.json and the ledger
    assert run.record.eval_exit_code is None and not (run.run_dir / "score.json").exists()
    assert run.record.val_bpb is None and run.row.status == "timeout"  # nothing past the budget is scored


def test_an_honest_run_fits_its_budget_and_records_its_container_time(adversarial: NightResult) -> None:
    run = adversarial.runs["baseline"]
    assert 0 < run.record.timings.train < LIMITS.train_cap_s
    assert run.row.train_s == pytest.approx(run.record.timings.train, abs=0.05)
    assert run.record.timings.train_budget == LIMITS.train_budget_s


def test_the_memorisers_are_refused_before_they_run(adversarial: NightResult) -> None:
    refused = " | ".join(adversarial.refused)
    assert "over the 65536-byte cap" in refused
    assert refused.count("embedded data") == 2
    memorised = [r for r in adversarial.rows if r.description.startswith("memoriser")]
    assert memorised == []  # never committed, never run, never scored


def test_an_error_message_carries_no_validation_data_to_anything_the_agent_reads(adversarial: NightResult) -> None:
    run = adversarial.case_run("exfil_oob_index")
    detail = (run.run_dir / "eval-detail.log").read_text()
    leaked = set(re.findall(r"index (\d+) is out of bounds", detail))
    assert leaked, "the attack did not hit the error it aims for"  # the values exist, privately
    readable = [
        run.run_dir / "eval.log",
        run.run_dir / "score.json",
        run.run_dir / "run.json",
        adversarial.tag_dir / "results.tsv",
        run.run_dir / "train.log",
    ]
    for path in readable:
        text = path.read_text()
        assert not any(value in text for value in leaked), path
    assert run.record.reason == "the model raised an error on evaluation input"
    assert (run.run_dir / "eval.log").read_text().strip() == f"rejected: {run.record.reason}"


def test_the_clock_cannot_be_set(adversarial: NightResult) -> None:
    report = reports(adversarial.case_run("clock_tamper").train_log)["clock_tamper"]
    assert report["clock_settime"] == "Operation not permitted"
    assert report["clock_settime_monotonic"] != "ok"


def host_processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_daemon_dies_with_its_container_and_cannot_swap_the_artifact(adversarial: NightResult) -> None:
    run = adversarial.case_run("daemon_left_behind")
    assert "daemon started" in run.train_log
    # Checked after the whole night: long after the daemon would have woken up.
    assert host_processes_with("adversarial-daemon-left-behind") == []
    assert run.record.val_bpb == baseline_bpb(adversarial)


def test_nothing_from_earlier_runs_is_left_in_a_new_container(adversarial: NightResult) -> None:
    report = probe_report(adversarial, "leftover_check")
    own = {"torchinductor_overnight"}  # made by this container's own torch import, not by an earlier run
    assert all(set(entries) <= own for entries in report["listing"].values()), report["listing"]
    assert len(report["processes"]) == 2, report["processes"]  # docker-init and train.py


# ---------------------------------------------------------------------------------------------
# 7 and 10. Resource abuse ends that run only; what it writes is hostile input.


def test_a_fork_bomb_is_contained(adversarial: NightResult) -> None:
    run = adversarial.case_run("fork_bomb")
    assert run.record.timings.train < LIMITS.train_cap_s + 5
    assert run.record.eval_exit_code is None


def test_a_memory_hog_is_stopped_by_the_memory_limit(adversarial: NightResult) -> None:
    run = adversarial.case_run("memory_hog")
    assert run.record.train_exit_code == 137
    assert f"{MEMORY_LIMIT_GB:g} GB memory limit" in run.record.reason


def test_a_graph_that_exhausts_the_evaluator_is_stopped_by_the_eval_containers_limit(adversarial: NightResult) -> None:
    run = adversarial.case_run("eval_memory_bomb")
    assert run.record.train_exit_code == 0 and run.record.eval_exit_code == 137
    assert "graph edited" in run.train_log


def test_filling_the_disk_is_stopped_by_the_kernel_and_does_not_stay_on_the_host(adversarial: NightResult) -> None:
    run = adversarial.case_run("disk_fill")
    assert "No space left on device" in run.train_log  # the tmpfs cap, enforced by the kernel
    assert run.record.timings.train < 10
    assert folder_bytes(run.run_dir) < 1 * 2**20, f"{folder_bytes(run.run_dir) / 2**20:.0f} MiB left in {run.run_dir}"


HOSTILE_OUTPUT_CASES = [
    "out_setuid_file",
    "out_special_files",
    "out_deep_tree",
    "out_junk_under_cap",
    "sparse_artifact",
    "disk_fill",
    "symlink_artifact",
    "daemon_left_behind",
]


@pytest.mark.parametrize("case", HOSTILE_OUTPUT_CASES)
def test_a_run_folder_holds_only_the_artifact_the_logs_and_the_controllers_records(
    adversarial: NightResult, case: str
) -> None:
    run = adversarial.case_run(case)
    allowed = set(RUN_FILES) | {RUN_JSON, REPLICATE_JSON, "transcript.json"}
    found = {}
    for entry in os.scandir(run.run_dir):
        st = entry.stat(follow_symlinks=False)
        found[entry.name] = st
        assert stat.S_ISREG(st.st_mode), (entry.name, oct(st.st_mode))  # no link, FIFO, device, folder
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), entry.name
    assert set(found) <= allowed, set(found) - allowed
    assert sum(st.st_blocks * 512 for st in found.values()) < 16 * 2**20  # the seed's artifact + logs


def test_hostile_entries_in_out_were_really_made(adversarial: NightResult) -> None:
    assert probe_report(adversarial, "out_setuid_file")["setuid_written"] is True
    special = probe_report(adversarial, "out_special_files")
    assert special["fifo"] == special["symlink"] == special["odd_name"] == special["locked_folder"] == "ok"
    assert special["char_device"] == "Operation not permitted"  # no CAP_MKNOD
    assert probe_report(adversarial, "out_deep_tree")["depth"] == 3000
    junk = probe_report(adversarial, "out_junk_under_cap")
    assert junk["junk_bytes"] > 0.5 * LIMITS.out_max_bytes


def test_nothing_hostile_is_anywhere_on_the_host_after_the_night(adversarial: NightResult) -> None:
    """Not in the tag's folder, and no volume of the night left in the engine."""
    for path in adversarial.tag_dir.rglob("*"):
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), path
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), path
        assert "level-" not in path.name and "junk" not in path.name and "\x1b" not in path.name, path


def test_a_sparse_artifact_is_refused_on_its_apparent_size(adversarial: NightResult) -> None:
    run = adversarial.case_run("sparse_artifact")
    assert "apparent size" in run.record.reason and str(1 << 40) in run.record.reason
    assert run.record.eval_exit_code is None


def test_a_log_flood_is_capped_and_the_run_still_scores(adversarial: NightResult) -> None:
    run = adversarial.case_run("log_flood")
    log = run.run_dir / "train.log"
    assert LIMITS.log_max_bytes <= log.stat().st_size <= LIMITS.log_max_bytes + 200
    assert log.read_bytes().rstrip().endswith(b"the rest was dropped]")
    assert run.record.val_bpb == baseline_bpb(adversarial)


def test_forged_ledger_rows_in_the_output_do_not_reach_the_ledger(adversarial: NightResult) -> None:
    run = adversarial.case_run("ledger_injection")
    lines = (adversarial.tag_dir / "results.tsv").read_text().splitlines()
    assert len(lines) == 1 + len(adversarial.rows)
    assert lines[0] == HEADER and all(len(line.split("\t")) == len(HEADER.split("\t")) for line in lines)
    assert [line.split("\t")[0] for line in lines[1:]] == [r.commit for r in adversarial.rows]  # no deadbee, no 0000000
    reason = run.record.reason or ""
    assert reason.isprintable() and "\t" not in reason and "\n" not in reason
    assert run.row.description.startswith("ledger_injection forged 0000000 0.000001")  # one line, flattened


# ---------------------------------------------------------------------------------------------
# 4 and 7 on a GPU: VRAM over the cap (fake NVML driven by what the hostile script holds).


class VramFromRun:
    """A fake NVML whose used memory is a 1 GiB idle baseline plus what the run says it holds."""

    class NVMLError(Exception):
        pass

    def __init__(self, out_dir: Callable[[], Path]) -> None:
        self.out_dir = out_dir  # the run's /out volume, as the host sees it

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int):
        try:
            held = int((self.out_dir() / ".vram_bytes").read_text() or 0)
        except Exception:  # the volume is not there yet, or the file not written yet
            held = 0
        used = GiB + held
        return type("Memory", (), {"total": 80 * GiB, "used": used, "free": 80 * GiB - used})()

    def nvmlDeviceGetUtilizationRates(self, handle: int):
        return type("Util", (), {"gpu": 99, "memory": 50})()

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:
        return []


def test_vram_over_the_cap_is_killed_by_the_watchdog(
    images, docker_client, test_data_dir: Path, tmp_path: Path
) -> None:
    run_id = "adv-vram-hog"
    train_py = tmp_path / "train.py"
    train_py.write_text(VRAM_CASE.source())
    train_py.chmod(0o644)
    runner = DockerRunner(docker_client, tick_s=0.1)
    job = specs.train_job(
        run_id=run_id,
        image=images,
        profile="test",
        seed=0,
        gpu=None,
        memory_gb=MEMORY_LIMIT_GB,
        data_dir=test_data_dir.resolve(),
        train_py=train_py,
        limits=LIMITS,
        labels={},
    )
    out_volume = specs.volume_name(run_id, "train")
    nvml = VramFromRun(lambda: Path(docker_client.volumes.get(out_volume).attrs["Mountpoint"]))
    dog = VramWatchdog(0, cap_gb=1.0, samples_path=tmp_path / "nvml.jsonl", nvml=nvml, interval_s=0.1)
    handle = runner.submit(job, [dog])
    try:
        outcome = runner.wait(handle)
    finally:
        runner.cancel(handle)
    assert outcome.killed_for is not None and VRAM_CASE.reason in outcome.killed_for
    assert not outcome.timed_out and outcome.exit_code == 137
    assert 1.0 * GiB < dog.peak_bytes < 2.0 * GiB
    assert docker_client.containers.list(all=True, filters={"label": f"overnight.run={run_id}"}) == []
    events = [json.loads(line).get("event") for line in (tmp_path / "nvml.jsonl").read_text().splitlines()]
    assert "kill" in events
    OBSERVED["vram_hog"] = f"crash: killed: {outcome.killed_for} (after {outcome.seconds:.1f} s, exit 137)"


def test_every_case_file_is_a_whole_train_py() -> None:
    """Each case reads on its own: a module docstring saying what it does and what must happen."""
    for case in (*CASES, VRAM_CASE):
        source = case.source()
        compile(source, str(case.path), "exec")
        assert source.startswith(f'"""Case {case.name}:'), case.name
        assert "Expected:" in source
        assert stat.S_ISREG(case.path.lstat().st_mode)


# ---------------------------------------------------------------------------------------------
# The table of docs/security.md, from this run.


EVIDENCE = {
    "fake_score_print": lambda r: (
        "printed val_bpb 0.000123 and wrote fake score.json to /out, /tmp, ~; "
        f"{sum(v != 'written' for v in r['writes'].values())} other writes refused"
    ),
    "monkeypatch_evaluator": lambda r: (
        "patched in its own process; "
        f"{sum(v != 'written' for v in r['writes'].values())} of {len(r['writes'])} writes refused "
        "(the rest in its tmpfs)"
    ),
    "read_val_known_paths": lambda r: f"/data holds {r['data_listing']}; {len(r['opened'])} opens failed",
    "search_val_data": lambda r: f"shards found: {r['shards']}; stdlib test files: {r['stdlib_test_files']}",
    "proc_other_processes": lambda r: f"PIDs visible: {r['pids']}",
    "env_secrets": lambda r: f"{len(r['environ_keys'])} variables, none secret; canary absent",
    "docker_socket": lambda r: f"no socket ({len(r['unix_sockets'])} found); TCP: {sorted(set(r['tcp'].values()))}",
    "network": lambda r: f"interfaces {r['interfaces']}; {sorted(set(r['tcp'].values()))}; DNS fails",
    "write_everywhere": lambda r: (
        f"{len(r['writes'])} writes refused; .git/ledger found: {len(r['git_or_ledger_found'])}"
    ),
    "escalate_privileges": lambda r: f"uid {r['uid']}, CapEff {r['cap_eff']}, setuid/unshare/mount refused",
    "leftover_check": lambda r: "nothing left in /tmp, ~, /dev/shm, /out; 2 processes",
}


def observed_line(adversarial: NightResult, case: str) -> str:
    run = adversarial.case_run(case)
    record = run.record
    if record.status in ("keep", "discard"):
        same = "= baseline" if record.val_bpb == baseline_bpb(adversarial) else "!= baseline"
        text = f"scored, val_bpb {record.val_bpb:.6f} {same}"
        report = reports(run.train_log).get(case)
        if case in EVIDENCE and report:
            text += f"; {EVIDENCE[case](report)}"
    elif record.status == "timeout":
        text = f"timeout at {record.timings.train:.1f} s: {record.reason}"
    else:
        text = f"{record.status}: {record.reason}"
    if case == "disk_fill":
        text += f"; {folder_bytes(run.run_dir) / 2**20:.0f} MiB left in the run folder"
    elif case == "log_flood":
        text += f"; train.log {(run.run_dir / 'train.log').stat().st_size} bytes, ends with the truncation marker"
    elif case == "daemon_left_behind":
        text += f"; daemon processes alive: {len(host_processes_with('adversarial-daemon-left-behind'))}"
    elif case == "ledger_injection":
        text += f"; results.tsv: {len(adversarial.rows)} rows, none forged"
    return text


def test_the_observed_table_covers_every_case(adversarial: NightResult) -> None:
    observed = {case.name: observed_line(adversarial, case.name) for case in CASES} | OBSERVED
    table = markdown_table(observed)
    missing = [case.name for case in CASES if "not run" in observed.get(case.name, "not run")]
    assert not missing
    if os.environ.get(TABLE_ENV):
        Path(os.environ[TABLE_ENV]).write_text(table)
