"""The manifests of one sample experiment, for a person to review before pointing overnight at a
cluster (`python -m controller k8s-manifests --profile gpu`): exactly what submit would create
for the train job and the eval job, plus the namespace's NetworkPolicy and a fetch pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluator import layout
from evaluator.profiles import get_profile
from sandbox import specs
from sandbox.kubernetes import manifests
from sandbox.kubernetes.cluster import Cluster
from sandbox.limits import Limits
from sandbox.runner import JobSpec

SAMPLE_RUN_ID = "sample-0001"
SAMPLE_LABELS = {specs.LABEL_TAG: "sample", "overnight.experiment": "1"}
SAMPLE_TRAIN_PY = b"# the experiment's train.py (its full text goes here)\n"


def sample_jobs(
    profile_name: str, cluster: Cluster, *, image: str, data_dir: Path, memory_gb: float, seed: int = 0
) -> tuple[JobSpec, JobSpec]:
    """The train and eval JobSpecs of one experiment of `profile_name` on a GPU (gpu profile)
    or without one, as the orchestrator builds them."""
    profile = get_profile(profile_name)
    limits = Limits.for_profile(profile)
    gpu = 0 if profile.name == "gpu" else None
    train = specs.train_job(
        run_id=SAMPLE_RUN_ID,
        image=cluster.image(image),
        profile=profile.name,
        seed=seed,
        gpu=gpu,
        memory_gb=memory_gb,
        data_dir=data_dir,
        train_py=Path("train.py"),
        limits=limits,
        labels=SAMPLE_LABELS,
    )
    evaluation = specs.eval_job(
        run_id=SAMPLE_RUN_ID,
        image=cluster.image(image),
        profile=profile.name,
        gpu=gpu,
        memory_gb=memory_gb,
        data_dir=data_dir,
        artifact=Path(layout.ARTIFACT_NAME),
        limits=limits,
        labels=SAMPLE_LABELS,
    )
    return train, evaluation


def sample_manifests(
    profile_name: str, cluster: Cluster, *, image: str, data_dir: Path, memory_gb: float
) -> list[dict[str, Any]]:
    train, evaluation = sample_jobs(profile_name, cluster, image=image, data_dir=data_dir, memory_gb=memory_gb)
    artifact = manifests.VolumeInput(claim=manifests.output_claim_name(train), name=layout.ARTIFACT_NAME)
    return [
        manifests.network_policy(cluster),
        *manifests.job_objects(train, cluster, {specs.TRAIN_PY: manifests.FileInput(SAMPLE_TRAIN_PY)}),
        manifests.fetch_pod(train, cluster),
        *manifests.job_objects(evaluation, cluster, {specs.ARTIFACT: artifact}),
    ]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=100)
