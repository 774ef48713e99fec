"""The Kubernetes backend of sandbox.runner.Runner: each job is a Job on the cluster.

    submit        ConfigMap (host input files), output PVC, Job (sandbox.kubernetes.manifests)
    stream_logs   a thread follows the pod's log into the run's file (returns at once)
    wait          watches the pod; kills it at cap_s after its container started (the Job's
                  activeDeadlineSeconds is the API server's backstop); maps DeadlineExceeded to
                  timed_out, OOMKilled to oom_killed; a pod that cannot start is a SandboxError
    fetch_output  a trusted fetch pod mounts the output volume read-only; the fetch program is
                  exec'd in it and streams the one file back (sandbox.kubernetes.fetch)
    cancel        deletes the Job, its pods, its ConfigMap and its PVC
    cleanup       the same for everything carrying a run's label

The eval job's artifact: after fetch_output(train, "model.pt2", dest) checked the file, an eval
JobSpec whose inputs name `dest` mounts that file read-only from the train job's output volume
(the train pod has ended, so nothing can change it). So the eval job must be submitted before
the train job is cancelled; the volume then stays until both are cancelled, in either order.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from typing_extensions import override

from evaluator.hostile import UnsafeFileError, read_regular
from sandbox.errors import SandboxError
from sandbox.kubernetes import manifests, names
from sandbox.kubernetes.api import TIMEOUT, api_client, call, error, status_of
from sandbox.kubernetes.cluster import Cluster
from sandbox.kubernetes.fetch import Receiver, fetch_command
from sandbox.kubernetes.follow import LogFollower
from sandbox.kubernetes.podwatch import FATAL_WAITING, PodView, PodWatch
from sandbox.runner import JobHandle, JobOutcome, JobSpec, Runner, Watcher
from sandbox.specs import LABEL_TAG

log = structlog.get_logger("sandbox")

KILL_WAIT_S = 30.0  # after a kill, how long to wait for the pod to be seen ended
LOG_DRAIN_S = 10.0
GONE_WAIT_S = 60.0  # cancel: how long to wait for the pods to be gone before the volumes go
FETCH_TIMEOUT_S = 1800.0
CONFIG_MAP_MAX = 1000 * 1024  # a ConfigMap holds at most 1 MiB, with its metadata
HELPER_LOG_MAX = 64 * 1024
POLL_S = 0.2


@dataclass
class _Job:
    """handle.native: the names of one job's objects and what the runner knows of it."""

    spec: JobSpec
    name: str
    claim: str
    config_map: str | None
    selector: str  # the job's pod
    submitted: float
    done: threading.Event = field(default_factory=threading.Event)
    logs: LogFollower | None = None
    fetch_pod: str | None = None
    consumed: list[str] = field(default_factory=list)  # claims of fetched inputs it mounts


@dataclass(frozen=True)
class _Fetched:
    run: str
    claim: str
    name: str


class KubernetesRunner(Runner):
    """sandbox.runner.Runner on a Kubernetes cluster, through the official client."""

    name = "kubernetes"
    data_on_host = False  # the data volume's <data dir name>/, verified by a pod at the night's start

    def __init__(self, client: Any, cluster: Cluster, *, deadline_slack_s: float | None = None) -> None:
        from kubernetes import client as k8s

        self.api = client
        self.core = k8s.CoreV1Api(client)
        self.batch = k8s.BatchV1Api(client)
        self.net = k8s.NetworkingV1Api(client)
        self.cluster = cluster
        self.ns = cluster.namespace
        self.deadline_slack_s = deadline_slack_s  # None: the start allowance (Cluster.start_timeout_s)
        self._fetched: dict[str, _Fetched] = {}  # host dest path -> where the checked file lives
        self._live: set[str] = set()  # output claims of jobs not cancelled yet
        self._consumers: dict[str, set[str]] = {}  # claim -> live jobs that mount a file of it
        self._lock = threading.Lock()
        self._ready = False

    # -- the namespace -------------------------------------------------------------------------

    def preflight(self) -> None:
        """The namespace exists and no traffic can reach or leave its pods (created or verified
        once per runner)."""
        if self._ready:
            return
        try:  # namespaces are cluster-wide: an account limited to the namespace may not read it
            response: Any = self.core.read_namespace(self.ns, _request_timeout=TIMEOUT, _preload_content=False)
            response.read()
        except Exception as exc:
            if status_of(exc) == 404:
                raise SandboxError(f"namespace {self.ns} does not exist: kubectl create namespace {self.ns}") from None
            if status_of(exc) != 403:
                raise error(f"namespace {self.ns}", exc) from None
        self.ensure_network_policy()
        self._ready = True

    def ensure_network_policy(self) -> None:
        policies = call("list NetworkPolicies", self.net.list_namespaced_network_policy, self.ns).items
        ours = [p for p in policies if p.metadata.name == manifests.DENY_ALL_POLICY]
        if not ours:
            call(
                "create the deny-all NetworkPolicy",
                self.net.create_namespaced_network_policy,
                self.ns,
                manifests.network_policy(self.cluster),
            )
            log.info("network_policy.created", namespace=self.ns)
        elif not _denies_all(ours[0]):
            raise SandboxError(
                f"NetworkPolicy {manifests.DENY_ALL_POLICY} in {self.ns} is not "
                "deny-all: delete it and the controller makes it again"
            )
        for policy in policies:
            if policy.metadata.name == manifests.DENY_ALL_POLICY or _is_prepare_egress(policy):
                continue
            if policy.spec.ingress or policy.spec.egress:
                raise SandboxError(
                    f"NetworkPolicy {policy.metadata.name} in namespace {self.ns} allows traffic, "
                    "and policies add up: give overnight a namespace of its own (--kube-namespace)"
                )

    # -- submit --------------------------------------------------------------------------------

    @override
    def image_id(self, ref: str) -> str:
        """The registry reference the cluster pulls: a cluster has no local image ids."""
        return ref if "/" in ref and not ref.startswith("sha256:") else self.cluster.image(ref)

    @override
    def submit(self, job: JobSpec, watchers: Sequence[Watcher] = ()) -> JobHandle:
        self.preflight()
        inputs, consumed = self._inputs(job)
        try:
            objects = manifests.job_objects(job, self.cluster, inputs, self.deadline_slack_s)
        except manifests.ManifestError as exc:
            raise SandboxError(f"{job.run_id} {job.role}: {exc}") from None
        created: list[dict[str, Any]] = []
        try:
            for obj in objects:
                self._create(obj)
                created.append(obj)
        except SandboxError:
            for obj in reversed(created):
                self._delete(obj["kind"], obj["metadata"]["name"])
            raise
        state = _Job(
            spec=job,
            name=manifests.job_name(job),
            claim=manifests.output_claim_name(job),
            config_map=next((o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"), None),
            selector=manifests.job_selector(job),
            submitted=time.monotonic(),
            consumed=consumed,
        )
        with self._lock:
            self._live.add(state.claim)
            for claim in consumed:
                self._consumers.setdefault(claim, set()).add(state.name)
        log.info("job.submitted", job=state.name, namespace=self.ns, cap_s=job.cap_s)
        return JobHandle(spec=job, native=state, watchers=list(watchers))

    def _inputs(self, job: JobSpec) -> tuple[dict[str, manifests.Input], list[str]]:
        inputs: dict[str, manifests.Input] = {}
        consumed: list[str] = []
        for path, host in job.inputs.items():
            with self._lock:
                fetched = self._fetched.get(os.path.abspath(host))
            if fetched is not None:
                if fetched.run != names.run_key(job.run_id):
                    raise SandboxError(
                        f"{job.run_id}: input {path} was fetched from another run; "
                        "a cluster serves only the same run's outputs"
                    )
                if fetched.claim not in self._live:
                    raise SandboxError(
                        f"{job.run_id}: input {path} is gone from the cluster with its "
                        "job: submit the eval job before cancelling the train job"
                    )
                inputs[path] = manifests.VolumeInput(claim=fetched.claim, name=fetched.name)
                consumed.append(fetched.claim)
                continue
            source = Path(os.path.abspath(host))
            try:
                content = read_regular(source, CONFIG_MAP_MAX)
            except (UnsafeFileError, OSError) as exc:
                raise SandboxError(
                    f"{job.run_id}: input {host} cannot go to the cluster: {exc} (a ConfigMap holds at most 1 MiB)"
                ) from None
            inputs[path] = manifests.FileInput(content)
        return inputs, consumed

    # -- logs ----------------------------------------------------------------------------------

    @override
    def stream_logs(self, handle: JobHandle, path: Path, max_bytes: int) -> None:
        """Starts following the job's log into `path` and returns; wait() drains it."""
        state = _state(handle)
        state.logs = LogFollower(self.core, self.ns, state.selector, path, max_bytes, state.done)
        state.logs.begin()

    # -- wait ----------------------------------------------------------------------------------

    @override
    def wait(self, handle: JobHandle) -> JobOutcome:
        watchers = handle.watchers
        state = _state(handle)
        job = state.spec
        outcome = JobOutcome()
        pods = PodWatch(self.core, self.ns, state.selector)
        started_watchers: list[Watcher] = []
        try:
            for watcher in watchers:
                watcher.before_start()
                started_watchers.append(watcher)
            pods.start()
            killed = False
            while True:
                view = pods.view()
                if view.error is not None:
                    raise SandboxError(
                        f"lost the Kubernetes API while {state.name} ran "
                        f"({view.error}); the experiment will be run again"
                    )
                now = time.monotonic()
                if handle.started_monotonic is None and view.started_at is not None:
                    handle.started_monotonic = view.started_at
                    log.info("job.started", job=state.name)
                if view.ended:
                    break
                if handle.started_monotonic is None:
                    self._check_start(state, view, now)
                elif now - handle.started_monotonic >= job.cap_s:
                    outcome.timed_out = True
                    log.warning("job.timeout", job=state.name, cap_s=job.cap_s)
                    killed = self._kill(state)
                    break
                elif reason := next((r for w in watchers if (r := w.check(handle))), None):
                    outcome.killed_for = reason
                    log.warning("job.killed", job=state.name, reason=reason)
                    killed = self._kill(state)
                    break
                pods.wait_change(self.cluster.tick_s)
            if killed:
                give_up = time.monotonic() + KILL_WAIT_S
                while not (view := pods.view()).ended and view.error is None and time.monotonic() < give_up:
                    pods.wait_change(self.cluster.tick_s)
            view = pods.view()
            self._ended(state, handle, view, outcome)
            return outcome
        finally:
            pods.stop()
            state.done.set()
            for watcher in started_watchers:
                watcher.finish()

    def _check_start(self, state: _Job, view: PodView, now: float) -> None:
        """Raises SandboxError for a job that cannot start (and kills it, so it never does)."""
        waiting = view.waiting()
        image = state.spec.image
        if waiting is not None and waiting[0] in FATAL_WAITING:
            self._kill(state)
            raise SandboxError(
                f"{state.name} cannot start: {waiting[0]} ({_clean(waiting[1])}) "
                f"for image {image}: push the images to the registry the cluster "
                "pulls from (docs/kubernetes.md)"
            )
        if now - state.submitted < self.cluster.start_timeout_s:
            return
        self._kill(state)
        bound = f"{self.cluster.start_timeout_s:.0f} s"
        unschedulable = view.unschedulable()
        if unschedulable is not None:
            hint = (
                f": no node has a free {self.cluster.gpu_resource_name} (is the NVIDIA device "
                "plugin running? kubectl describe nodes)"
                if state.spec.gpu is not None
                else ""
            )
            raise SandboxError(f"{state.name} found no node within {bound}: {_clean(unschedulable)}{hint}")
        what = waiting[0] if waiting else (view.pod.status.phase if view.pod else "no pod yet")
        raise SandboxError(
            f"{state.name} did not start within {bound} ({what}): "
            f"kubectl -n {self.ns} describe pods -l {state.selector}"
        )

    def _ended(self, state: _Job, handle: JobHandle, view: PodView, outcome: JobOutcome) -> None:
        ended_at = view.ended_at or time.monotonic()
        outcome.seconds = max(0.0, ended_at - (handle.started_monotonic or ended_at))
        terminated = view.terminated()
        if terminated is not None:
            outcome.exit_code = terminated.exit_code
            outcome.oom_killed = terminated.reason == "OOMKilled"
            if view.started_at == view.ended_at and terminated.started_at and terminated.finished_at:
                # Over before the host saw it run: the container's own times (whole seconds).
                reported = (terminated.finished_at - terminated.started_at).total_seconds()
                outcome.seconds = max(outcome.seconds, reported)
        if view.pod is not None and view.pod.status is not None and view.pod.status.reason == "DeadlineExceeded":
            outcome.timed_out = True
        job = call(f"read Job {state.name}", self.batch.read_namespaced_job, state.name, self.ns, missing_ok=True)
        conditions = (job.status.conditions or []) if job is not None and job.status else []
        if any(c.reason == "DeadlineExceeded" for c in conditions):
            outcome.timed_out = True  # the API server's deadline fired before the host's
        if state.logs is not None:
            state.done.set()
            state.logs.join(LOG_DRAIN_S)
            outcome.log_truncated = state.logs.truncated
        log.info(
            "job.ended",
            job=state.name,
            exit_code=outcome.exit_code,
            seconds=round(outcome.seconds, 2),
            oom=outcome.oom_killed,
            timed_out=outcome.timed_out,
            killed_for=outcome.killed_for,
        )

    def _kill(self, state: _Job) -> bool:
        """Stop the job now: the Job goes (so no new pod comes) and its pod with no grace."""
        self._delete("Job", state.name)
        self._delete_collection(state.selector)
        return True

    def _delete_collection(self, selector: str) -> None:
        response = call(
            "delete pods",
            self.core.delete_collection_namespaced_pod,
            self.ns,
            label_selector=selector,
            grace_period_seconds=0,
            _preload_content=False,
        )
        if response is not None:
            response.read()
            response.release_conn()

    # -- fetch ---------------------------------------------------------------------------------

    @override
    def fetch_output(self, handle: JobHandle, name: str, dest: Path, max_bytes: int) -> int:
        """Copy ONE regular file of the job's output volume to the new host file `dest`;
        UnsafeFileError when the file is refused, SandboxError when the transfer fails."""
        from kubernetes import client as k8s
        from kubernetes.stream import stream

        state = _state(handle)
        if "/" in name or name in ("", ".", ".."):
            raise UnsafeFileError(f"bad file name {name!r}")
        self._require_ended(state)
        pod = self._fetch_pod(state)
        receiver = Receiver(Path(dest), name, max_bytes)
        # stream() swaps the client's transport while it runs: give it a client of its own.
        core = k8s.CoreV1Api(k8s.ApiClient(self.api.configuration))
        socket = call(
            f"exec the fetch in {pod}",
            stream,
            core.connect_get_namespaced_pod_exec,
            pod,
            self.ns,
            command=fetch_command(state.spec.output_dir, name, max_bytes),
            stdout=True,
            stderr=False,
            stdin=False,
            tty=False,
            _preload_content=False,
            binary=True,
        )
        assert socket is not None
        try:
            give_up = time.monotonic() + FETCH_TIMEOUT_S
            while socket.is_open():
                if time.monotonic() > give_up:
                    raise SandboxError(f"fetch of {name} from {state.name} took over {FETCH_TIMEOUT_S:.0f} s")
                socket.update(timeout=1)
                if data := socket.read_all():
                    receiver.feed(data)
            if data := socket.read_all():
                receiver.feed(data)
            size = receiver.finish()
        except BaseException:
            receiver.abort()
            raise
        finally:
            socket.close()
        with self._lock:
            self._fetched[os.path.abspath(dest)] = _Fetched(
                run=names.run_key(state.spec.run_id), claim=state.claim, name=name
            )
        log.info("job.fetched", job=state.name, file=name, bytes=size)
        return size

    def _require_ended(self, state: _Job) -> None:
        pods = call(
            f"list the pods of {state.name}", self.core.list_namespaced_pod, self.ns, label_selector=state.selector
        ).items
        for pod in pods:
            statuses = (pod.status.container_statuses or []) if pod.status else []
            if pod.status.phase not in ("Succeeded", "Failed") and not (statuses and statuses[0].state.terminated):
                raise SandboxError(f"{state.name} still runs: fetch its outputs after wait()")

    def _fetch_pod(self, state: _Job) -> str:
        if state.fetch_pod is None:
            manifest = manifests.fetch_pod(state.spec, self.cluster)
            self._create(manifest, exists_ok=True)
            state.fetch_pod = manifest["metadata"]["name"]
        self._wait_running(state.fetch_pod)
        return state.fetch_pod

    def _wait_running(self, pod_name: str) -> Any:
        give_up = time.monotonic() + self.cluster.start_timeout_s
        while True:
            pod = call(f"read pod {pod_name}", self.core.read_namespaced_pod, pod_name, self.ns)
            view = PodView(pod=pod)
            state = view.state()
            if pod.status.phase in ("Succeeded", "Failed") or (state is not None and state.terminated):
                return pod
            if state is not None and state.running:
                return pod
            waiting = view.waiting()
            if waiting is not None and waiting[0] in FATAL_WAITING:
                raise SandboxError(f"pod {pod_name} cannot start: {waiting[0]} ({_clean(waiting[1])})")
            if time.monotonic() > give_up:
                why = view.unschedulable() or (waiting[0] if waiting else pod.status.phase)
                raise SandboxError(
                    f"pod {pod_name} did not start within {self.cluster.start_timeout_s:.0f} s: {_clean(why)}"
                )
            time.sleep(POLL_S)

    # -- cancel and cleanup --------------------------------------------------------------------

    @override
    def cancel(self, handle: JobHandle) -> None:
        """Kill the job and remove its objects (idempotent). An output volume goes once neither
        its own job nor a job that mounts a file of it is left."""
        state = _state(handle)
        state.done.set()  # the log stream ends with the pod
        self._delete("Job", state.name)
        role_selector = names.selector(
            {names.LABEL_RUN: names.run_key(state.spec.run_id), names.LABEL_ROLE: state.spec.role}
        )
        self._delete_pods(role_selector)
        if state.config_map is not None:
            self._delete("ConfigMap", state.config_map)
        with self._lock:
            self._live.discard(state.claim)
            for claim in state.consumed:
                self._consumers.get(claim, set()).discard(state.name)
            unused = [
                claim
                for claim in (state.claim, *state.consumed)
                if claim not in self._live and not self._consumers.get(claim)
            ]
            for claim in unused:
                self._forget(claim)
        for claim in unused:
            self._delete("PersistentVolumeClaim", claim)
        log.info("job.cancelled", job=state.name)

    @override
    def cleanup(self, run_id: str | None = None) -> list[str]:
        """Remove every object of a run (or of every run), found by its label; their names."""
        selector = names.LABEL_RUN if run_id is None else names.selector({names.LABEL_RUN: names.run_key(run_id)})
        return self.cleanup_selector(selector)

    def cleanup_tag(self, tag: str) -> list[str]:
        """Everything of a night's tag (the controller's `overnight.tag` label)."""
        return self.cleanup_selector(names.selector({LABEL_TAG: names.label_value(tag)}))

    def cleanup_selector(self, selector: str) -> list[str]:
        removed: list[str] = []
        jobs = call("list Jobs", self.batch.list_namespaced_job, self.ns, label_selector=selector)
        for job in jobs.items:
            self._delete("Job", job.metadata.name)
            removed.append(f"job/{job.metadata.name}")
        removed += self._delete_pods(selector)
        kinds = (
            ("ConfigMap", self.core.list_namespaced_config_map),
            ("PersistentVolumeClaim", self.core.list_namespaced_persistent_volume_claim),
        )
        for kind, lister in kinds:
            for obj in call(f"list {kind}s", lister, self.ns, label_selector=selector).items:
                self._delete(kind, obj.metadata.name)
                removed.append(f"{kind.lower()}/{obj.metadata.name}")
                if kind == "PersistentVolumeClaim":
                    with self._lock:
                        self._forget(obj.metadata.name)
        with self._lock:
            for dest in [d for d, f in self._fetched.items() if f.claim not in self._live]:
                del self._fetched[dest]
        return removed

    def _forget(self, claim: str) -> None:
        """The claim is gone; what was fetched from it stays known (a late eval job is told)."""
        self._live.discard(claim)
        self._consumers.pop(claim, None)

    def _delete_pods(self, selector: str) -> list[str]:
        """Delete the pods of `selector` with no grace and wait (bounded) until they are gone,
        so their volumes can go too."""
        pods = call("list pods", self.core.list_namespaced_pod, self.ns, label_selector=selector).items
        if not pods:
            return []
        self._delete_collection(selector)
        give_up = time.monotonic() + GONE_WAIT_S
        while call("list pods", self.core.list_namespaced_pod, self.ns, label_selector=selector).items:
            if time.monotonic() > give_up:
                log.warning("pods.still_there", selector=selector)
                break
            time.sleep(POLL_S)
        return [f"pod/{pod.metadata.name}" for pod in pods]

    # -- data on the cluster -------------------------------------------------------------------

    def data_manifest(self, data_name: str, image: str) -> str:
        """Check data/<data_name> on the data volume against its manifest (in a pod, read-only);
        its identity (manifest_sha256), or a SandboxError saying to prepare it."""
        self.preflight()
        pod_name = f"overnight-data-{names.run_key(data_name)}-verify-{secrets.token_hex(3)}"
        code, text = self.run_pod(manifests.verify_pod(self.cluster, image=image, data_name=data_name, name=pod_name))
        for line in text.splitlines():
            if line.startswith("manifest_sha256: ") and code == 0:
                return line.split(": ", 1)[1].strip()
        last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), f"exit {code}")
        raise SandboxError(
            f"data {data_name} on volume {self.cluster.data_volume}: {_clean(last)}: "
            "run `python -m sandbox.kubernetes.prepare`"
        )

    def run_pod(self, manifest: dict[str, Any]) -> tuple[int | None, str]:
        """Run a helper pod to its end: (exit code, the start of its log). The pod is removed."""
        name = manifest["metadata"]["name"]
        self._create(manifest)
        try:
            pod = self._wait_running(name)
            while not _finished(pod):
                time.sleep(POLL_S)
                pod = call(f"read pod {name}", self.core.read_namespaced_pod, name, self.ns)
            text = (
                call(
                    f"read the log of {name}",
                    self.core.read_namespaced_pod_log,
                    name,
                    self.ns,
                    limit_bytes=HELPER_LOG_MAX,
                )
                or ""
            )
            terminated = PodView(pod=pod).terminated()
            return (terminated.exit_code if terminated is not None else None), str(text)
        finally:
            self._delete("Pod", name)

    # -- objects -------------------------------------------------------------------------------

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        api, resource = _APIS[kind]
        return getattr(getattr(self, api), f"{verb}_namespaced_{resource}")

    def _create(self, obj: dict[str, Any], exists_ok: bool = False) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        create = self._method("create", kind)
        try:  # the answer (the object as created) is not needed
            create(self.ns, obj, _request_timeout=TIMEOUT, _preload_content=False).read()
        except Exception as exc:
            if status_of(exc) == 409:
                if exists_ok:
                    return
                raise SandboxError(
                    f"{kind} {name} already exists (left by an earlier attempt): python -m controller cleanup"
                ) from None
            raise error(f"create {kind} {name}", exc) from None

    def _delete(self, kind: str, name: str) -> None:
        delete = self._method("delete", kind)
        extra: dict[str, Any] = {"grace_period_seconds": 0} if kind == "Pod" else {}
        if kind == "Job":
            extra["propagation_policy"] = "Background"  # else the API orphans the Job's pods
        # The answer (the object, or a Status, depending on kind and server) is not needed.
        response = call(
            f"delete {kind} {name}", delete, name, self.ns, missing_ok=True, _preload_content=False, **extra
        )
        if response is not None:
            response.read()
            response.release_conn()


_APIS = {
    "Job": ("batch", "job"),
    "Pod": ("core", "pod"),
    "ConfigMap": ("core", "config_map"),
    "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    "NetworkPolicy": ("net", "network_policy"),
}


def make_kubernetes_runner(settings: Any) -> KubernetesRunner:
    """The runner the controller uses with --backend kubernetes."""
    return KubernetesRunner(api_client(settings.kube_config), Cluster.from_settings(settings))


def _state(handle: JobHandle) -> _Job:
    if not isinstance(handle.native, _Job):
        raise SandboxError("this job handle was not made by the Kubernetes runner")
    return handle.native


def _finished(pod: Any) -> bool:
    return pod.status.phase in ("Succeeded", "Failed") or PodView(pod=pod).terminated() is not None


def _denies_all(policy: Any) -> bool:
    spec = policy.spec
    selector = spec.pod_selector
    everyone = selector is None or (not selector.match_labels and not selector.match_expressions)
    return everyone and set(spec.policy_types or []) >= {"Ingress", "Egress"} and not spec.ingress and not spec.egress


def _is_prepare_egress(policy: Any) -> bool:
    selector = policy.spec.pod_selector
    return (
        policy.metadata.name == manifests.PREPARE_EGRESS_POLICY
        and selector is not None
        and selector.match_labels == {names.LABEL_POD: "prepare"}
        and not selector.match_expressions
        and not policy.spec.ingress
    )


def _clean(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:300]
