"""What the Kubernetes backend adds to the runner contract: the API server's deadline, GPUs that
are not there, images that cannot be pulled, a lost API server, the namespace's NetworkPolicy,
the eval job's artifact served from the train job's volume, settings and credentials
(the real `kubernetes` client against tests/fake_kube_api.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_support import IMAGE, KubeSetup, kube_setup
from runner_contract import ARTIFACT, MODEL_BYTES, WRITE_MODEL, Backend, run_id

from controller.settings import load_settings
from sandbox.errors import SandboxError
from sandbox.kubernetes.api import api_client
from sandbox.kubernetes.cluster import Cluster
from sandbox.kubernetes.runner import KubernetesRunner, make_kubernetes_runner

SLEEP = "import time\nprint('up', flush=True)\ntime.sleep(60)\n"


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[KubeSetup]]:
    setups: list[KubeSetup] = []
    yield setups
    for setup in setups:
        setup.kube.stop()


def backend_of(setup: KubeSetup, tmp_path: Path) -> Backend:
    work = tmp_path / "host"
    work.mkdir(exist_ok=True)
    return Backend(
        name="kubernetes",
        runner=setup.runner,
        image=IMAGE,
        data_dir=setup.data_dir,
        leftovers=setup.leftovers,
        work=work,
    )


def make(made: list[KubeSetup], tmp_path: Path, **options: object) -> tuple[KubeSetup, Backend]:
    setup = kube_setup(tmp_path, **options)  # type: ignore[arg-type]
    made.append(setup)
    return setup, backend_of(setup, tmp_path)


# -- time ------------------------------------------------------------------------------------


def test_the_api_servers_deadline_is_reported_as_a_timeout(made: list, tmp_path: Path) -> None:
    # No start allowance: activeDeadlineSeconds = cap_s from the Job's start, which comes a
    # second before the container's (the image pull), so the API server kills first.
    setup, backend = make(made, tmp_path, pull_s=1.0, deadline_slack_s=0)
    rid = run_id("deadline")
    handle, outcome, _ = backend.run(backend.job(rid, SLEEP, cap_s=2.0))
    assert outcome.timed_out
    assert outcome.seconds < 2.0  # not the host's kill, which comes 2 s after the start
    job = setup.kube.list("jobs", f"overnight.run={rid}")[0]
    assert any(c.get("reason") == "DeadlineExceeded" for c in job["status"]["conditions"])
    backend.runner.cancel(handle)
    assert setup.leftovers(rid) == []


def test_the_cap_counts_from_the_containers_start_not_from_the_submit(made: list, tmp_path: Path) -> None:
    _, backend = make(made, tmp_path, pull_s=2.0)
    _, outcome, _ = backend.run(backend.job(run_id("pull"), "print('quick')\n", cap_s=1.5))
    assert outcome.exit_code == 0 and not outcome.timed_out and outcome.seconds < 1.5


def test_the_job_carries_the_api_servers_deadline_and_no_retry(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    rid = run_id("spec")
    handle, _, _ = backend.run(backend.job(rid, "print('x')\n", cap_s=30))
    job = setup.kube.list("jobs", f"overnight.run={rid}")[0]
    assert job["spec"]["activeDeadlineSeconds"] == 30 + 20  # cap + start allowance
    assert job["spec"]["backoffLimit"] == 0
    assert len(setup.kube.list("pods", f"overnight.run={rid},overnight.pod=job")) == 1
    backend.runner.cancel(handle)


# -- jobs that cannot start ------------------------------------------------------------------


def test_a_gpu_job_with_no_free_gpu_is_a_clear_error_after_the_start_bound(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path, gpus=0, start_timeout_s=1.5)
    rid = run_id("nogpu")
    handle = backend.runner.submit(backend.job(rid, SLEEP, gpu=0))
    started = time.monotonic()
    with pytest.raises(
        SandboxError,
        match=r"found no node within 2 s: 0/1 nodes are available: "
        r"1 Insufficient nvidia.com/gpu.*device plugin",
    ):
        backend.runner.wait(handle)
    assert time.monotonic() - started < 10
    assert setup.kube.list("pods", f"overnight.run={rid}") == []  # it will not start later
    backend.runner.cancel(handle)
    assert setup.leftovers(rid) == []


def test_a_gpu_job_gets_exactly_one_gpu_and_runs(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path, gpus=1)
    rid = run_id("gpu")
    handle, outcome, _ = backend.run(backend.job(rid, "print('on the gpu')\n", gpu=0))
    assert outcome.exit_code == 0
    pod = setup.kube.list("pods", f"overnight.run={rid}")[0]
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} not in pod["spec"]["containers"][0]["env"]
    backend.runner.cancel(handle)


def test_an_image_the_cluster_cannot_pull_says_to_push_the_images(made: list, tmp_path: Path) -> None:
    _, backend = make(made, tmp_path)
    job = backend.job(run_id("pull"), SLEEP)
    handle = backend.runner.submit(type(job)(**{**job.__dict__, "image": "registry.test/overnight-evaluator:gone"}))
    with pytest.raises(SandboxError, match="ImagePullBackOff.*push the images"):
        backend.runner.wait(handle)
    backend.runner.cancel(handle)


# -- a lost API server -----------------------------------------------------------------------


def test_a_lost_api_server_mid_run_is_a_sandbox_error_and_cleanup_finds_the_rest(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    rid = run_id("lost")
    handle = backend.runner.submit(backend.job(rid, SLEEP))
    backend.runner.stream_logs(handle, backend.work / "lost.log", 2**20)
    threading.Timer(1.5, setup.kube.sever).start()
    with pytest.raises(SandboxError, match="lost the Kubernetes API .* will be run again"):
        backend.runner.wait(handle)
    setup.kube.restore()  # the controller comes back later and cleans up by label
    assert backend.runner.cleanup(rid)
    assert setup.leftovers(rid) == [] and setup.kube.processes == {}


# -- the namespace ---------------------------------------------------------------------------


def test_the_namespace_gets_a_deny_all_network_policy(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    backend.runner.submit(backend.job(run_id("np"), "print(1)\n"))
    policies = setup.kube.list("networkpolicies")
    assert [p["metadata"]["name"] for p in policies] == ["overnight-deny-all"]
    assert policies[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def _policy(name: str, spec: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "overnight"},
        "spec": spec,
    }


def test_a_policy_that_lets_traffic_in_the_namespace_is_refused(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    setup.kube._create(
        "networkpolicies",
        "overnight",
        _policy("allow-dns", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
    )
    with pytest.raises(SandboxError, match="allow-dns .* allows traffic.*namespace of its own"):
        backend.runner.submit(backend.job(run_id("np"), "print(1)\n"))
    assert setup.kube.list("jobs") == []


def test_a_weakened_deny_all_policy_is_refused(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    setup.kube._create(
        "networkpolicies", "overnight", _policy("overnight-deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]})
    )
    with pytest.raises(SandboxError, match="not deny-all"):
        backend.runner.submit(backend.job(run_id("np"), "print(1)\n"))


def test_a_missing_namespace_says_how_to_create_it(made: list, tmp_path: Path) -> None:
    setup, _ = make(made, tmp_path)
    runner = KubernetesRunner(api_client(setup.kubeconfig), Cluster(namespace="elsewhere"))
    with pytest.raises(SandboxError, match="kubectl create namespace elsewhere"):
        runner.preflight()


# -- the eval job's artifact -----------------------------------------------------------------


def _trained(backend: Backend, rid: str) -> tuple[object, Path]:
    train, outcome, _ = backend.run(backend.job(rid, WRITE_MODEL))
    assert outcome.exit_code == 0
    artifact = backend.work / f"{rid}.pt2"
    backend.runner.fetch_output(train, "model.pt2", artifact, 2**24)
    return train, artifact


def test_the_eval_pod_mounts_only_the_artifact_read_only_and_no_train_py(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    rid = run_id("mount")
    train, artifact = _trained(backend, rid)
    evaluation = backend.runner.submit(
        backend.job(rid, "", role="eval", command=("python", "-c", "print(1)"), inputs={ARTIFACT: artifact})
    )
    job = setup.kube.list("jobs", f"overnight.run={rid},overnight.role=eval")[0]
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[ARTIFACT] == {"name": "from-0", "mountPath": ARTIFACT, "subPath": "model.pt2", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "from-0")
    assert volume["persistentVolumeClaim"] == {"claimName": f"overnight-{rid}-train-out", "readOnly": True}
    assert "/work/train.py" not in mounts and not any("configMap" in v for v in pod["volumes"])
    assert mounts["/score"]["name"] == "out" and "readOnly" not in mounts["/score"]
    for handle in (evaluation, train):  # either order leaves nothing
        backend.runner.cancel(handle)
    assert setup.leftovers(rid) == []


def test_an_eval_job_after_its_train_job_was_cancelled_is_refused(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    rid = run_id("late")
    train, artifact = _trained(backend, rid)
    backend.runner.cancel(train)
    with pytest.raises(SandboxError, match="submit the eval job before cancelling the train job"):
        backend.runner.submit(
            backend.job(rid, "", role="eval", command=("python", "-c", "1"), inputs={ARTIFACT: artifact})
        )
    assert setup.leftovers(rid) == []


def test_an_artifact_fetched_from_another_run_is_refused(made: list, tmp_path: Path) -> None:
    _, backend = make(made, tmp_path)
    _, artifact = _trained(backend, run_id("one"))
    with pytest.raises(SandboxError, match="fetched from another run"):
        backend.runner.submit(
            backend.job(run_id("two"), "", role="eval", command=("python", "-c", "1"), inputs={ARTIFACT: artifact})
        )


def test_fetching_from_a_job_that_still_runs_is_refused(made: list, tmp_path: Path) -> None:
    _, backend = make(made, tmp_path)
    handle = backend.runner.submit(backend.job(run_id("busy"), SLEEP))
    log = backend.work / "busy.log"
    backend.runner.stream_logs(handle, log, 2**20)
    ends = time.monotonic() + 20
    while "up" not in log.read_text() and time.monotonic() < ends:
        time.sleep(0.1)
    with pytest.raises(SandboxError, match="still runs"):
        backend.runner.fetch_output(handle, "model.pt2", backend.work / "m", 2**20)
    backend.runner.cancel(handle)


def test_a_host_input_too_big_for_a_config_map_is_refused(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    rid = run_id("huge")
    with pytest.raises(SandboxError, match="ConfigMap holds at most 1 MiB"):
        backend.runner.submit(backend.job(rid, "#" * (2 * 2**20)))
    assert setup.leftovers(rid) == []


def test_the_fetched_bytes_are_those_the_job_wrote(made: list, tmp_path: Path) -> None:
    _, backend = make(made, tmp_path)
    _, artifact = _trained(backend, run_id("bytes"))
    assert artifact.read_bytes() == MODEL_BYTES


# -- settings and credentials ----------------------------------------------------------------


def test_make_kubernetes_runner_follows_the_settings(
    made: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup, _ = make(made, tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        profile="cpu",
        backend="kubernetes",
        kube_config=str(setup.kubeconfig),
        image_registry="registry.test",
        storage_class="fast-local",
        kube_runtime_class="gvisor",
    )
    runner = make_kubernetes_runner(settings)
    runner.preflight()
    assert runner.cluster.image(settings.image) == IMAGE
    assert (runner.cluster.storage_class, runner.cluster.runtime_class) == ("fast-local", "gvisor")
    missing = load_settings(profile="cpu", kube_config=str(tmp_path / "nope"))
    with pytest.raises(SandboxError, match="is not a file: set --kube-config"):
        make_kubernetes_runner(missing)


def test_credentials_the_api_refuses_are_a_clear_error(made: list, tmp_path: Path) -> None:
    setup, _ = make(made, tmp_path)
    config = setup.kubeconfig.read_text().replace("fake-token", "stolen-token")
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text(config)
    runner = KubernetesRunner(api_client(bad), Cluster())
    with pytest.raises(SandboxError, match="not allowed .*Role in docs/kubernetes.md"):
        runner.preflight()


def test_cleanup_of_a_tag_removes_every_run_of_that_night(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    first, second = run_id("tag-a"), run_id("tag-b")
    for rid in (first, second):
        backend.runner.submit(backend.job(rid, SLEEP))
    removed = backend.runner.cleanup_tag("contract")
    assert len([r for r in removed if r.startswith("job/")]) == 2
    assert setup.leftovers(first) == [] and setup.leftovers(second) == []


def test_a_job_that_ended_before_wait_reports_the_containers_own_time(made: list, tmp_path: Path) -> None:
    setup, backend = make(made, tmp_path)
    rid = run_id("early")
    handle = backend.runner.submit(backend.job(rid, "import time\ntime.sleep(1.2)\n"))
    ends = time.monotonic() + 30
    while not any(p["status"].get("phase") == "Succeeded" for p in setup.kube.list("pods", f"overnight.run={rid}")):
        assert time.monotonic() < ends
        time.sleep(0.1)
    outcome = backend.runner.wait(handle)
    assert outcome.exit_code == 0 and 1.0 <= outcome.seconds <= 3.0
    backend.runner.cancel(handle)
