"""Every object the Kubernetes backend creates holds the sandbox's isolation, for every profile
and cluster setting: checked as properties over all of them, and against the published
Kubernetes schemas (kubernetes-validate, strict: an unknown or misspelt field fails)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from evaluator import layout
from sandbox import specs
from sandbox.kubernetes import manifests
from sandbox.kubernetes.cluster import Cluster
from sandbox.kubernetes.sample import sample_jobs, sample_manifests
from sandbox.runner import JobSpec

PROFILES = ("gpu", "cpu", "test")
CLUSTERS = {
    "defaults": Cluster(),
    "registry+class": Cluster(image_registry="registry.example.com/team", storage_class="fast"),
    "gvisor": Cluster(runtime_class="gvisor", namespace="research"),
    "other-gpu": Cluster(gpu_resource_name="amd.com/gpu", cpus=2.5),
}
VERSIONS = ("1.28", "1.37")  # the oldest cluster this backend supports, and the newest schemas


def everything() -> list[tuple[str, str, Cluster, list[dict[str, Any]]]]:
    """(profile, cluster name, cluster, every object of one experiment plus the helper pods)."""
    cases = []
    for profile, (cname, cluster) in itertools.product(PROFILES, CLUSTERS.items()):
        objects = sample_manifests(
            profile, cluster, image="overnight-evaluator:latest", data_dir=Path("data") / profile, memory_gb=8.0
        )
        objects += [
            manifests.verify_pod(
                cluster,
                image=cluster.image("overnight-evaluator:latest"),
                data_name=profile,
                name="overnight-data-verify-x",
            ),
            manifests.prepare_job(
                cluster, profile=profile, data_name=profile, dataset=None, force=False, name="overnight-prepare-x"
            ),
            manifests.prepare_egress_policy(cluster),
        ]
        cases.append((profile, cname, cluster, objects))
    return cases


CASES = everything()
IDS = [f"{profile}-{cname}" for profile, cname, _, _ in CASES]


def pods_of(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every Job and Pod."""
    found = []
    for obj in objects:
        if obj["kind"] == "Job":
            found.append((obj, obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "Pod":
            found.append((obj, obj["spec"]))
    return found


def role(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["overnight.role"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_object_validates_against_the_kubernetes_schemas(case: tuple) -> None:
    for obj, version in itertools.product(case[3], VERSIONS):
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_pod_is_locked_down(case: tuple) -> None:
    _, _, cluster, objects = case
    for obj, pod in pods_of(objects):
        where = obj["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["enableServiceLinks"] is False, where
        assert not (pod["hostNetwork"] or pod["hostPID"] or pod["hostIPC"]), where
        assert pod["restartPolicy"] == "Never", where
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod.get("runtimeClassName") == cluster.runtime_class
        assert "serviceAccountName" not in pod and "nodeName" not in pod
        assert not any("hostPath" in v for v in pod["volumes"]), where
        [container] = pod["containers"]
        assert "initContainers" not in pod and "ephemeralContainers" not in pod
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000 and sc["runAsGroup"] == 1000
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        limits = container["resources"]["limits"]
        assert {"memory", "cpu", "ephemeral-storage"} <= set(limits), where
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["sizeLimit"]
        home = next(e["value"] for e in container["env"] if e["name"] == "HOME")
        assert volumes[mounts[home]["name"]]["emptyDir"]["sizeLimit"]
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": manifests.SHM_SIZE}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_pod_reaches_the_network_but_preparation(case: tuple) -> None:
    _, _, _, objects = case
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"] == manifests.DENY_ALL_POLICY)
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    exception = next(p for p in policies if p["metadata"]["name"] == manifests.PREPARE_EGRESS_POLICY)
    assert exception["spec"]["podSelector"] == {"matchLabels": {"overnight.pod": "prepare"}}
    assert exception["spec"]["policyTypes"] == ["Egress"] and "ingress" not in exception["spec"]
    for obj, pod in pods_of(objects):
        template_labels = (
            obj["spec"]["template"]["metadata"]["labels"] if obj["kind"] == "Job" else obj["metadata"]["labels"]
        )
        if role(obj) == "prepare":
            assert template_labels["overnight.pod"] == "prepare"
            continue
        assert template_labels["overnight.pod"] != "prepare"  # the exception never matches it
        assert pod["dnsPolicy"] == "None" and pod["dnsConfig"]["nameservers"] == ["127.0.0.1"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_job_has_a_deadline_and_no_second_try(case: tuple) -> None:
    profile, _, cluster, objects = case
    train, evaluation = sample_jobs(profile, cluster, image="i", data_dir=Path("d"), memory_gb=1)
    caps = {"train": train.cap_s, "eval": evaluation.cap_s}
    for obj, pod in pods_of(objects):
        if obj["kind"] == "Job":
            spec = obj["spec"]
            assert spec["backoffLimit"] == 0 and spec["completions"] == 1
            assert spec["ttlSecondsAfterFinished"] > 0
            assert spec["activeDeadlineSeconds"] > 0
            if role(obj) in caps:  # the host's cap, plus the start allowance at most
                assert caps[role(obj)] <= spec["activeDeadlineSeconds"] <= caps[role(obj)] + cluster.start_timeout_s + 1
        else:
            assert pod["activeDeadlineSeconds"] > 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_exactly_one_gpu_on_gpu_jobs_and_none_elsewhere(case: tuple) -> None:
    profile, _, cluster, objects = case
    for obj, pod in pods_of(objects):
        [container] = pod["containers"]
        limits = container["resources"]["limits"]
        gpus = {k: v for k, v in limits.items() if "gpu" in k}
        env = {e["name"]: e["value"] for e in container["env"]}
        if profile == "gpu" and role(obj) in ("train", "eval") and obj["kind"] == "Job":
            assert gpus == {cluster.gpu_resource_name: "1"}
            assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin says which GPU
            assert pod["tolerations"][0]["key"] == cluster.gpu_resource_name
        else:
            assert gpus == {}
            assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
            assert "tolerations" not in pod


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_score_pod_runs_no_agent_code_and_sees_only_the_artifact(case: tuple) -> None:
    profile, _, _, objects = case
    job = next(o for o in objects if o["kind"] == "Job" and role(o) == "eval")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == list(specs.eval_command(profile, 0 if profile == "gpu" else None))
    assert container["command"][:3] == ["python", "-m", "evaluator.score"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert specs.TRAIN_PY not in mounts and specs.OUT not in mounts
    assert not any("configMap" in v for v in volumes.values())
    artifact = mounts[specs.ARTIFACT]
    assert artifact["readOnly"] is True and artifact["subPath"] == layout.ARTIFACT_NAME
    claim = volumes[artifact["name"]]["persistentVolumeClaim"]
    assert claim == {"claimName": "overnight-sample-0001-train-out", "readOnly": True}
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert {m["mountPath"] for m in writable} == {"/tmp", "/home/overnight", "/dev/shm", "/score"}
    score = volumes[mounts["/score"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert score == "overnight-sample-0001-eval-out"
    assert {p for p in mounts if p.startswith("/data/")} == {
        "/data/manifest.json",
        "/data/tokenizer",
        "/data/eval",
    }  # the private sample, never val/


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_train_pod_writes_only_its_own_volume_and_never_sees_validation_data(case: tuple) -> None:
    profile, _, cluster, objects = case
    job = next(o for o in objects if o["kind"] == "Job" and role(o) == "train")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert {m["mountPath"] for m in writable} == {"/tmp", "/home/overnight", "/dev/shm", "/out"}
    out = volumes[next(m["name"] for m in writable if m["mountPath"] == "/out")]
    assert out["persistentVolumeClaim"] == {"claimName": "overnight-sample-0001-train-out"}
    data = [m for m in container["volumeMounts"] if m["name"] == "data"]
    assert all(m["readOnly"] and m["subPath"].startswith(f"{profile}/") for m in data)
    assert {m["mountPath"] for m in data} == {"/data/manifest.json", "/data/tokenizer", "/data/train"}
    assert volumes["data"]["persistentVolumeClaim"]["readOnly"] is True
    claim = next(
        o
        for o in objects
        if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "overnight-sample-0001-train-out"
    )
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"  # Limits.out_max_bytes
    assert claim["spec"].get("storageClassName") == cluster.storage_class
    assert container["command"] == ["python", specs.TRAIN_PY]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_fetch_pod_mounts_the_output_read_only(case: tuple) -> None:
    _, _, _, objects = case
    pod = next(o for o in objects if o["kind"] == "Pod" and o["metadata"]["labels"]["overnight.pod"] == "fetch")
    [container] = pod["spec"]["containers"]
    out = next(m for m in container["volumeMounts"] if m["mountPath"] == "/out")
    assert out["readOnly"] is True
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == out["name"])
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    assert container["command"][:4] == ["python", "-I", "-S", "-c"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_object_is_labelled_for_cleanup(case: tuple) -> None:
    for obj in case[3]:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "overnight"
        if obj["kind"] != "NetworkPolicy":
            assert labels["overnight.run"] and labels["overnight.role"]
        if obj["kind"] == "Job":
            template = obj["spec"]["template"]["metadata"]["labels"]
            assert template["overnight.run"] == labels["overnight.run"]


def _job(**changes: Any) -> JobSpec:
    train, _ = sample_jobs("cpu", Cluster(), image="i", data_dir=Path("data/cpu"), memory_gb=2)
    return JobSpec(**{**train.__dict__, **changes})


def test_run_ids_that_are_not_kubernetes_names_get_a_stable_safe_key() -> None:
    job = _job(run_id="My_Tag.With.Dots-0001" + "x" * 60, labels={"overnight.tag": "a" * 70})
    objects = manifests.job_objects(job, Cluster(), {specs.TRAIN_PY: manifests.FileInput(b"x")})
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37", strict=True)
        assert obj["metadata"]["annotations"]["overnight.run-id"] == job.run_id
    again = manifests.job_objects(job, Cluster(), {specs.TRAIN_PY: manifests.FileInput(b"x")})
    assert [o["metadata"]["name"] for o in objects] == [o["metadata"]["name"] for o in again]
    other = manifests.job_objects(
        _job(run_id="my-tag.with.dots-0001" + "x" * 60), Cluster(), {specs.TRAIN_PY: manifests.FileInput(b"x")}
    )
    assert objects[-1]["metadata"]["name"] != other[-1]["metadata"]["name"]


def test_a_local_image_id_cannot_go_to_a_cluster() -> None:
    with pytest.raises(manifests.ManifestError, match="registry reference"):
        manifests.job_manifest(_job(image="sha256:" + "0" * 64), Cluster(), {})


def test_a_binary_input_travels_as_binary_data() -> None:
    config = manifests.inputs_config_map(_job(), Cluster(), {specs.TRAIN_PY: manifests.FileInput(b"\xff\xfe\x00")})
    assert config is not None and config["binaryData"] == {"train.py": "//4A"}
    assert "data" not in config and config["immutable"] is True


def test_quantities_are_what_the_job_asked_for() -> None:
    job = manifests.job_manifest(_job(memory_gb=1.5, cpuset="0-3,6"), Cluster(), {})
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "1536Mi"
    assert resources["limits"]["cpu"] == "5"
    claim = manifests.output_claim(_job(output_max_bytes=3 * 2**20 + 1), Cluster())
    assert claim["spec"]["resources"]["requests"]["storage"] == "4Mi"
