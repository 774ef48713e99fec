"""`make prepare` on a cluster: the prepare image writes the data dir onto the cluster's data
volume (a Job, the only sandbox pod allowed to reach the network, to download the dataset),
then a read-only pod checks it against its manifest, as `make prepare` does locally.

    python -m sandbox.kubernetes.prepare [--profile P] [--dataset D] [--force]
                                         [--kube-config F] [--kube-namespace NS] [--image-registry R]

Prints `manifest_sha256: <hex>`, the data identity the runs record. Data that is already there
and checks out is left as it is (--force prepares it again).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.kubernetes import manifests, names
from sandbox.kubernetes.api import call
from sandbox.kubernetes.follow import LogFollower
from sandbox.kubernetes.podwatch import PodWatch
from sandbox.kubernetes.runner import KubernetesRunner
from sandbox.logs import last_line

LOG_MAX = 50 * 2**20


def prepare_on_cluster(
    runner: KubernetesRunner,
    *,
    profile: str,
    data_name: str,
    image: str,
    dataset: str | None = None,
    force: bool = False,
    log_path: Path,
    say: Callable[[str], None] = print,
) -> str:
    """Prepare <data volume>/<data_name> unless it is there and checks out; its identity."""
    cluster = runner.cluster
    runner.preflight()
    if (
        call(
            f"read PVC {cluster.data_volume}",
            runner.core.read_namespaced_persistent_volume_claim,
            cluster.data_volume,
            runner.ns,
            missing_ok=True,
        )
        is None
    ):
        raise SandboxError(
            f"no PersistentVolumeClaim {cluster.data_volume} in namespace {runner.ns}: "
            "create the data volume first (docs/kubernetes.md)"
        )
    if not force:
        try:
            identity = runner.data_manifest(data_name, image)
            say(f"data {data_name} is already on volume {cluster.data_volume} and checks out")
            return identity
        except SandboxError:
            pass
    log_path.parent.mkdir(parents=True, exist_ok=True)
    name = f"overnight-prepare-{names.run_key(data_name)}-{secrets.token_hex(3)}"
    job = manifests.prepare_job(cluster, profile=profile, data_name=data_name, dataset=dataset, force=force, name=name)
    selector = names.selector(job["spec"]["template"]["metadata"]["labels"])
    runner._create(manifests.prepare_egress_policy(cluster), exists_ok=True)
    try:
        runner._create(job)
        say(f"preparing {data_name} on volume {cluster.data_volume} (Job {name}); log: {log_path}")
        code = _run_to_end(runner, selector, log_path)
        if code != 0:
            raise SandboxError(f"preparation failed (exit {code}): {last_line(log_path) or 'see ' + str(log_path)}")
    finally:
        runner._delete("Job", name)
        runner._delete_pods(selector)
        runner._delete("NetworkPolicy", manifests.PREPARE_EGRESS_POLICY)
    return runner.data_manifest(data_name, image)


def _run_to_end(runner: KubernetesRunner, selector: str, log_path: Path) -> int | None:
    done = threading.Event()
    follower = LogFollower(runner.core, runner.ns, selector, log_path, LOG_MAX, done)
    follower.begin()
    pods = PodWatch(runner.core, runner.ns, selector)
    pods.start()
    give_up = time.monotonic() + manifests.PREPARE_DEADLINE_S + runner.cluster.start_timeout_s
    try:
        while not (view := pods.view()).ended:
            if view.error is not None:
                raise SandboxError(f"lost the Kubernetes API during preparation ({view.error})")
            if time.monotonic() > give_up:
                raise SandboxError("preparation did not end in time")
            pods.wait_change(1.0)
        terminated = view.terminated()
        return terminated.exit_code if terminated is not None else None
    finally:
        pods.stop()
        done.set()
        follower.join(10)


def main(argv: list[str] | None = None) -> int:
    from controller.settings import SettingsError, load_settings
    from sandbox.kubernetes.runner import make_kubernetes_runner

    parser = argparse.ArgumentParser(prog="python -m sandbox.kubernetes.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--force", action="store_true")
    for flag in ("kube_config", "kube_namespace", "image_registry", "storage_class", "image"):
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(
            profile=args.profile,
            kube_config=args.kube_config,
            kube_namespace=args.kube_namespace,
            image=args.image,
            image_registry=args.image_registry,
            storage_class=args.storage_class,
        )
        runner = make_kubernetes_runner(settings)
        data_name = Path(settings.data_dir).name
        identity = prepare_on_cluster(
            runner,
            profile=settings.profile,
            data_name=data_name,
            dataset=args.dataset,
            force=args.force,
            image=runner.cluster.image(settings.image),
            log_path=Path(settings.runs_dir) / f"prepare-{data_name}.log",
        )
    except (SandboxError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"data: {settings.kube_data_volume}/{data_name}")
    print(f"manifest_sha256: {identity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
