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
SAMPLE_LABELS = {"overnight.tag": "sample", "overnight.experiment": "1"}
SAMPLE_TRAIN_PY = b"# the experiment's train.py (its full text goes here)\n"


def sample_jobs(profile_name: str, cluster: Cluster, *, image: str, data_dir: Path,
                memory_gb: float, seed: int = 0) -> tuple[JobSpec, JobSpec]:
    """The train and eval JobSpecs of one experiment of `profile_name` on a GPU (gpu profile)
    or without one, as the orchestrator builds them."""
    profile = get_profile(profile_name)
    limits = Limits.for_profile(profile)
    gpu = 0 if profile.name == "gpu" else None
    common: dict[str, Any] = {"run_id": SAMPLE_RUN_ID, "image": cluster.image(image),
                              "data_dir": data_dir, "memory_gb": memory_gb, "gpu": gpu,
                              "labels": SAMPLE_LABELS}
    train = JobSpec(
        role="train", command=("python", specs.TRAIN_PY),
        environment=specs.train_environment(profile.name, seed, gpu),
        data_parts=(layout.MANIFEST, layout.TOKENIZER_DIR, layout.TRAIN_DIR),
        inputs={specs.TRAIN_PY: Path("train.py")}, output_dir=specs.OUT,
        output_max_bytes=limits.out_max_bytes, output_max_files=limits.out_max_entries,
        cap_s=limits.train_cap_s, **common)
    evaluation = JobSpec(
        role="eval", command=tuple(specs.eval_command(profile.name, gpu)),
        environment=specs.environment(gpu),
        data_parts=(layout.MANIFEST, layout.TOKENIZER_DIR, layout.VAL_DIR),
        inputs={f"{specs.ARTIFACT_DIR}/{layout.ARTIFACT_NAME}": Path("artifact") / layout.ARTIFACT_NAME},
        output_dir=specs.SCORE_DIR, output_max_bytes=limits.score_max_bytes,
        output_max_files=16, cap_s=limits.eval_cap_s, **common)
    return train, evaluation


def sample_manifests(profile_name: str, cluster: Cluster, *, image: str, data_dir: Path,
                     memory_gb: float) -> list[dict[str, Any]]:
    train, evaluation = sample_jobs(profile_name, cluster, image=image, data_dir=data_dir,
                                    memory_gb=memory_gb)
    artifact = manifests.VolumeInput(claim=manifests.output_claim_name(train),
                                     name=layout.ARTIFACT_NAME)
    return [
        manifests.network_policy(cluster),
        *manifests.job_objects(train, cluster, {specs.TRAIN_PY: manifests.FileInput(SAMPLE_TRAIN_PY)}),
        manifests.fetch_pod(train, cluster),
        *manifests.job_objects(evaluation, cluster,
                               {f"{specs.ARTIFACT_DIR}/{layout.ARTIFACT_NAME}": artifact}),
    ]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=100)
