"""A fake Kubernetes API server on loopback, for the real `kubernetes` client.

It speaks the real REST and JSON for what the sandbox uses: create, read, list, delete (one and
collection) of Jobs, Pods, PersistentVolumeClaims, ConfigMaps and NetworkPolicies; reading a
Namespace; `?watch=true` streams of newline-delimited events; pod logs, with `follow=true`
streamed chunked as the container writes; and `pods/<name>/exec` over a WebSocket with the
channel.k8s.io framing (stdout on channel 1, the Status on channel 3). Every created object is
checked against the published schemas (kubernetes-validate, strict) and refused with 422 when
it does not match, as a real server refuses an invalid object.

Behind the API, a small fake control plane:
- a job controller makes one pod per Job (labels job-name, controller-uid, owner reference),
  enforces activeDeadlineSeconds from the Job's start (kills and deletes the pod, condition
  Failed/DeadlineExceeded), and marks Jobs Complete or Failed when their pod ends;
- a scheduler that leaves a pod Pending/Unschedulable when it asks for more GPUs (the resource
  name given) than are free, or names a volume claim that does not exist;
- a kubelet that runs the container's command as a REAL local process: `python` is this
  interpreter, volumes are folders (emptyDir: fresh, PVC: the claim's folder, ConfigMap: its
  files), and every absolute path in the command, environment and workingDir that falls under a
  mountPath is rewritten to the folder behind it (the image's own paths through `image_paths`).
  It merges stdout and stderr into the pod log, OOM-kills (exit 137, reason OOMKilled) a process
  whose resident memory passes the memory limit, and simulates an image pull delay and images
  that cannot be pulled.
- `sever()` drops every connection and stops listening (a lost API server); the cluster goes on
  running; `restore()` listens again on the same port.

Not simulated: read-only mounts (the tests check the manifests for those), emptyDir size
limits, NetworkPolicy enforcement, ttlSecondsAfterFinished, nodes.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes_validate

TOKEN = "fake-token"
SCHEMA_VERSION = "1.30"
KINDS = {  # plural -> (apiVersion, kind)
    "pods": ("v1", "Pod"),
    "persistentvolumeclaims": ("v1", "PersistentVolumeClaim"),
    "configmaps": ("v1", "ConfigMap"),
    "jobs": ("batch/v1", "Job"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
}
ROUTE = re.compile(
    r"^/(?:api/v1|apis/batch/v1|apis/networking\.k8s\.io/v1)/namespaces/(?P<ns>[^/]+)"
    r"(?:/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>log|exec))?)?)?$"
)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TICK = 0.02


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def matches(labels: dict[str, str], selector: str | None) -> bool:
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


# ---------------------------------------------------------------------------------------------
# the cluster


class Process:
    """One container: a real local process and its log file."""

    def __init__(self, popen: subprocess.Popen, log: Path) -> None:
        self.popen = popen
        self.log = log

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()

    def rss(self) -> int:
        """Resident memory of the process and its descendants."""
        total, stack = 0, [self.popen.pid]
        while stack:
            pid = stack.pop()
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                for task in Path(f"/proc/{pid}/task").iterdir():
                    stack += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
        return total


class FakeKube:
    def __init__(
        self,
        workdir: Path,
        *,
        namespace: str = "overnight",
        gpus: int = 0,
        gpu_resource: str = "nvidia.com/gpu",
        pull_s: float = 0.0,
        image_paths: dict[str, Path] | None = None,
        images: set[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespaces = {namespace}
        self.gpus = gpus
        self.gpu_resource = gpu_resource
        self.pull_s = pull_s
        self.image_paths = dict(image_paths or {})
        self.images = images  # the images the registry has (None: every image)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, plural, type, object
        self.rv = 1
        self.claim_dirs: dict[tuple[str, str], Path] = {}
        self.external_claims: set[tuple[str, str]] = set()
        self.processes: dict[tuple[str, str], Process] = {}
        self.pod_state: dict[tuple[str, str], dict[str, Any]] = {}  # the kubelet's own notes
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request served
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0
        self.stopped = threading.Event()

    # -- life ------------------------------------------------------------------------------

    def start(self) -> FakeKube:
        handler = type("Handler", (_Handler,), {"kube": self})
        server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sever(self) -> None:
        """The API server goes away: every open connection is cut, no new one is accepted."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.stopped.set()
        self.sever()
        with self.lock:
            processes = list(self.processes.values())
        for process in processes:
            process.kill()

    def kubeconfig(self, path: Path) -> Path:
        ns = min(self.namespaces)
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": ns}}],
                }
            )
        )
        return path

    # -- what tests look at ----------------------------------------------------------------

    def add_claim(self, name: str, folder: Path, namespace: str | None = None) -> None:
        """A PVC that exists before the sandbox comes (the data volume), backed by `folder`."""
        ns = namespace or min(self.namespaces)
        self._create(
            "persistentvolumeclaims",
            ns,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            },
            folder=Path(folder),
        )

    def list(self, plural: str, selector: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(obj)
                for (kind, _, _), obj in sorted(self.objects.items())
                if kind == plural and matches(obj["metadata"].get("labels", {}), selector)
            ]

    def leftovers(self, selector: str) -> list[str]:
        """Every object (and running process) that carries the labels of `selector`."""
        with self.lock:
            found = [
                f"{kind}/{name}"
                for (kind, _, name), obj in sorted(self.objects.items())
                if matches(obj["metadata"].get("labels", {}), selector)
            ]
        return found

    def claim_dir(self, name: str, namespace: str | None = None) -> Path:
        return self.claim_dirs[(namespace or min(self.namespaces), name)]

    # -- the store -------------------------------------------------------------------------

    def _event(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, plural, kind, copy.deepcopy(obj)))
        self.changed.notify_all()

    def _get(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    def _create(
        self, plural: str, ns: str, body: dict[str, Any], folder: Path | None = None, validate: bool = True
    ) -> dict[str, Any]:
        api_version, kind = KINDS[plural]
        if ns not in self.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        if body.get("apiVersion") != api_version or body.get("kind") != kind:
            raise ApiError(400, "BadRequest", f"expected {api_version} {kind}")
        meta = body.setdefault("metadata", {})
        name = meta.get("name", "")
        if not DNS_SUBDOMAIN.match(name) or len(name) > (63 if plural == "jobs" else 253):
            raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: metadata.name')
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
        if validate:
            try:
                kubernetes_validate.validate(body, SCHEMA_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {str(exc).splitlines()[0]}') from None
        with self.lock:
            if (plural, ns, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now())
            body.setdefault("status", {})
            self.objects[(plural, ns, name)] = body
            if plural == "persistentvolumeclaims":
                if folder is None:
                    folder = self.workdir / f"pvc-{meta['uid']}"
                    folder.mkdir()
                    folder.chmod(0o777)
                else:
                    self.external_claims.add((ns, name))
                self.claim_dirs[(ns, name)] = folder
                body["status"] = {"phase": "Bound", "accessModes": body["spec"]["accessModes"]}
            self._event(plural, "ADDED", body)
            if plural == "jobs":
                threading.Thread(target=self._job_controller, args=(ns, name), daemon=True).start()
            if plural == "pods":
                self.pod_state[(ns, name)] = {}
                threading.Thread(target=self._kubelet, args=(ns, name), daemon=True).start()
            return copy.deepcopy(body)

    def _remove(self, plural: str, ns: str, name: str) -> None:
        obj = self.objects.pop((plural, ns, name), None)
        if obj is None:
            return
        self._event(plural, "DELETED", obj)
        if plural == "persistentvolumeclaims":
            folder = self.claim_dirs.pop((ns, name))
            if (ns, name) not in self.external_claims:
                shutil.rmtree(folder, ignore_errors=True)
        if plural == "pods":
            self._release_claims(ns)
            self.pod_state.pop((ns, name), None)

    def _claims_in_use(self, ns: str) -> set[str]:
        used = set()
        for (plural, pns, _), pod in self.objects.items():
            if plural == "pods" and pns == ns:
                used |= {
                    v["persistentVolumeClaim"]["claimName"]
                    for v in pod["spec"]["volumes"]
                    if "persistentVolumeClaim" in v
                }
        return used

    def _release_claims(self, ns: str) -> None:
        """pvc-protection: a claim deleted while in use goes once no pod uses it."""
        used = self._claims_in_use(ns)
        for (plural, pns, name), obj in list(self.objects.items()):
            if (
                plural == "persistentvolumeclaims"
                and pns == ns
                and obj["metadata"].get("deletionTimestamp")
                and name not in used
            ):
                self._remove(plural, ns, name)

    def delete(self, plural: str, ns: str, name: str, propagation: str | None) -> dict[str, Any]:
        with self.lock:
            obj = self._get(plural, ns, name)
            self._delete(plural, ns, name, obj, propagation)
            return copy.deepcopy(obj)

    def _delete(self, plural: str, ns: str, name: str, obj: dict[str, Any], propagation: str | None) -> None:
        if plural == "pods":
            self._kill_pod(ns, name)
            self._remove(plural, ns, name)
        elif plural == "jobs":
            self._remove(plural, ns, name)
            if (propagation or "Orphan") != "Orphan":  # batch/v1 Jobs orphan their pods by default
                for (kind, pns, pod), pobj in list(self.objects.items()):
                    owners = pobj["metadata"].get("ownerReferences", [])
                    if kind == "pods" and pns == ns and any(o["uid"] == obj["metadata"]["uid"] for o in owners):
                        self._kill_pod(ns, pod)
                        self._remove("pods", ns, pod)
        elif plural == "persistentvolumeclaims" and name in self._claims_in_use(ns):
            obj["metadata"]["deletionTimestamp"] = now()
            obj["metadata"]["finalizers"] = ["kubernetes.io/pvc-protection"]
            self._event(plural, "MODIFIED", obj)
        else:
            self._remove(plural, ns, name)

    # -- job controller --------------------------------------------------------------------

    def _job_controller(self, ns: str, name: str) -> None:
        with self.lock:
            job = self.objects.get(("jobs", ns, name))
            if job is None:
                return
            uid = job["metadata"]["uid"]
            started = time.monotonic()
            job["status"] = {"startTime": now(), "active": 1}
            self._event("jobs", "MODIFIED", job)
            template = copy.deepcopy(job["spec"]["template"])
            labels = {
                **template["metadata"].get("labels", {}),
                "job-name": name,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "batch.kubernetes.io/controller-uid": uid,
            }
            pod_name = f"{name}-{secrets.token_hex(3)[:5]}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [
                        {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": True}
                    ],
                },
                "spec": template["spec"],
            }
            self._create("pods", ns, pod, validate=False)
        deadline = job["spec"].get("activeDeadlineSeconds")
        while not self.stopped.is_set():
            with self.lock:
                job = self.objects.get(("jobs", ns, name))
                if job is None or job["metadata"]["uid"] != uid:
                    return
                pod = self.objects.get(("pods", ns, pod_name))
                phase = (pod or {}).get("status", {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    self._finish_job(
                        job, phase == "Succeeded", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                    )
                    return
                if deadline is not None and time.monotonic() - started > deadline:
                    if pod is not None:
                        self._kill_pod(ns, pod_name)
                        self._remove("pods", ns, pod_name)
                    self._finish_job(job, False, "DeadlineExceeded", "Job was active longer than specified deadline")
                    return
                self.changed.wait(TICK)

    def _finish_job(self, job: dict[str, Any], ok: bool, reason: str, message: str) -> None:
        stamp = now()
        if ok:
            conditions = [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": stamp},
                {"type": "Complete", "status": "True", "lastTransitionTime": stamp},
            ]
        else:
            conditions = [
                {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": stamp}
                for kind in ("FailureTarget", "Failed")
            ]
        job["status"] = {**job["status"], "active": 0, "conditions": conditions, "succeeded" if ok else "failed": 1}
        if ok:
            job["status"]["completionTime"] = stamp
        self._event("jobs", "MODIFIED", job)

    # -- scheduler and kubelet -------------------------------------------------------------

    def _gpus_in_use(self) -> int:
        return sum(
            state.get("gpus", 0)
            for key, state in self.pod_state.items()
            if ("pods", *key) in self.objects
            and self.objects[("pods", *key)]["status"].get("phase") in ("Pending", "Running")
        )

    def _set_status(self, ns: str, name: str, **status: Any) -> dict[str, Any] | None:
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return None
        pod["status"].update(status)
        self._event("pods", "MODIFIED", pod)
        return pod

    def _container_status(self, pod: dict[str, Any], state: dict[str, Any], image_id: str = "") -> list:
        container = pod["spec"]["containers"][0]
        return [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": image_id,
                "ready": "running" in state,
                "restartCount": 0,
                "started": "running" in state,
                "state": state,
            }
        ]

    def _kubelet(self, ns: str, name: str) -> None:
        with self.lock:
            pod = self.objects[("pods", ns, name)]
            container = pod["spec"]["containers"][0]
            gpus = int(container.get("resources", {}).get("limits", {}).get(self.gpu_resource, 0))
            pod["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
            self._event("pods", "MODIFIED", pod)
        # schedule
        while not self.stopped.is_set():
            with self.lock:
                pod = self.objects.get(("pods", ns, name))
                if pod is None:
                    return
                claims = [
                    v["persistentVolumeClaim"]["claimName"]
                    for v in pod["spec"]["volumes"]
                    if "persistentVolumeClaim" in v
                ]
                missing = [c for c in claims if ("persistentvolumeclaims", ns, c) not in self.objects]
                free = self.gpus - self._gpus_in_use()
                if not missing and gpus <= free:
                    self.pod_state[(ns, name)]["gpus"] = gpus
                    self._set_status(
                        ns,
                        name,
                        conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}],
                        containerStatuses=self._container_status(pod, {"waiting": {"reason": "ContainerCreating"}}),
                        startTime=now(),
                    )
                    break
                message = (
                    f'persistentvolumeclaim "{missing[0]}" not found'
                    if missing
                    else f"0/1 nodes are available: 1 Insufficient {self.gpu_resource}. "
                    "preemption: 0/1 nodes are available: 1 No preemption victims found "
                    "for incoming pod."
                )
                if pod["status"].get("conditions", [{}])[0].get("message") != message:
                    self._set_status(
                        ns,
                        name,
                        conditions=[
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": message,
                                "lastTransitionTime": now(),
                            }
                        ],
                    )
                self.changed.wait(0.1)
        # pull
        image = container["image"]
        missing = self.images is not None and image not in self.images
        pulled_at = time.monotonic() + self.pull_s
        while time.monotonic() < pulled_at or missing:
            with self.lock:
                pod = self.objects.get(("pods", ns, name))
                if pod is None or self.stopped.is_set():
                    return
                if missing and time.monotonic() >= pulled_at:
                    reason = "ImagePullBackOff"
                    self._set_status(
                        ns,
                        name,
                        containerStatuses=self._container_status(
                            pod, {"waiting": {"reason": reason, "message": f'Back-off pulling image "{image}"'}}
                        ),
                    )
                    self.changed.wait(0.2)
                    continue
            time.sleep(TICK)
        # run
        with self.lock:
            pod = self.objects.get(("pods", ns, name))
            if pod is None:
                return
            try:
                process = self._start(pod)
            except ApiError as exc:
                self._set_status(
                    ns,
                    name,
                    containerStatuses=self._container_status(
                        pod, {"waiting": {"reason": "CreateContainerConfigError", "message": exc.message}}
                    ),
                )
                return
            self.processes[(ns, name)] = process
            started = now()
            digest = "sha256:" + hashlib.sha256(image.encode()).hexdigest()
            self._set_status(
                ns,
                name,
                phase="Running",
                containerStatuses=self._container_status(
                    pod, {"running": {"startedAt": started}}, image_id=f"{image}@{digest}"
                ),
            )
            started_mono = time.monotonic()
        memory = quantity(container["resources"]["limits"]["memory"])
        pod_deadline = pod["spec"].get("activeDeadlineSeconds")
        reason = None
        while process.popen.poll() is None:
            if process.rss() > memory:
                reason = "OOMKilled"
                process.kill()
                break
            if pod_deadline is not None and time.monotonic() - started_mono > pod_deadline:
                reason = "DeadlineExceeded"
                process.kill()
                break
            time.sleep(TICK)
        code = process.popen.wait()
        code = 128 - code if code < 0 else code
        with self.lock:
            self.processes.pop((ns, name), None)
            pod = self.objects.get(("pods", ns, name))
            if pod is None:
                return
            terminated = {
                "exitCode": code,
                "startedAt": started,
                "finishedAt": now(),
                "reason": reason if reason == "OOMKilled" else ("Completed" if code == 0 else "Error"),
                "containerID": f"fake://{name}",
            }
            status: dict[str, Any] = {"phase": "Succeeded" if code == 0 and reason is None else "Failed"}
            if reason == "DeadlineExceeded":
                status.update(
                    reason="DeadlineExceeded", message="Pod was active on the node longer than the specified deadline"
                )
            status["containerStatuses"] = self._container_status(
                pod, {"terminated": terminated}, pod["status"]["containerStatuses"][0]["imageID"]
            )
            self._set_status(ns, name, **status)

    def _kill_pod(self, ns: str, name: str) -> None:
        """The kubelet stops the container of a pod that is being deleted (exit 137)."""
        process = self.processes.pop((ns, name), None)
        if process is None:
            return
        process.kill()
        pod = self.objects.get(("pods", ns, name))
        if pod is not None:
            pod["metadata"]["deletionTimestamp"] = now()
            running = pod["status"]["containerStatuses"][0]
            terminated = {
                "exitCode": 137,
                "reason": "Error",
                "finishedAt": now(),
                "startedAt": running["state"].get("running", {}).get("startedAt", now()),
            }
            self._set_status(
                ns,
                name,
                phase="Failed",
                containerStatuses=self._container_status(pod, {"terminated": terminated}, running["imageID"]),
            )

    # -- the container's file system -------------------------------------------------------

    def _volume_dirs(self, pod: dict[str, Any], root: Path) -> dict[str, Path]:
        ns = pod["metadata"]["namespace"]
        dirs: dict[str, Path] = {}
        for volume in pod["spec"]["volumes"]:
            name = volume["name"]
            if "emptyDir" in volume:
                dirs[name] = root / "volumes" / name
                dirs[name].mkdir(parents=True)
            elif "persistentVolumeClaim" in volume:
                dirs[name] = self.claim_dirs[(ns, volume["persistentVolumeClaim"]["claimName"])]
            elif "configMap" in volume:
                cm = self.objects.get(("configmaps", ns, volume["configMap"]["name"]))
                if cm is None:
                    raise ApiError(404, "NotFound", f'configmap "{volume["configMap"]["name"]}" not found')
                dirs[name] = root / "volumes" / name
                dirs[name].mkdir(parents=True)
                files = {k: v.encode() for k, v in cm.get("data", {}).items()}
                files |= {k: base64.b64decode(v) for k, v in cm.get("binaryData", {}).items()}
                for item in volume["configMap"].get("items") or [{"key": k, "path": k} for k in files]:
                    target = dirs[name] / item["path"]
                    target.write_bytes(files[item["key"]])
                    target.chmod(volume["configMap"].get("defaultMode", 0o644))
            else:
                raise ApiError(422, "Invalid", f"volume {name}: kind not simulated")
        return dirs

    def _start(self, pod: dict[str, Any]) -> Process:
        name = pod["metadata"]["name"]
        root = self.workdir / f"pod-{name}-{pod['metadata']['uid'][:8]}"
        root.mkdir()
        dirs = self._volume_dirs(pod, root)
        container = pod["spec"]["containers"][0]
        mounts: list[tuple[str, Path, bool]] = []
        for mount in container.get("volumeMounts", []):
            source = dirs[mount["name"]] / mount.get("subPath", "")
            mounts.append((mount["mountPath"], source, bool(mount.get("readOnly"))))
        fs = ContainerFS(root / "rootfs", mounts, self.image_paths)
        env = {e["name"]: fs.path(e["value"]) for e in container.get("env", [])}
        argv = [fs.path(arg) for arg in container["command"]]
        if argv[0] in ("python", "python3") or argv[0].endswith("/python"):
            argv[0] = sys.executable
        log = root / "container.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=fs.path(container.get("workingDir", "/")),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pod_state[(pod["metadata"]["namespace"], name)].update(fs=fs, log=log)
        return Process(popen, log)

    def exec_in(self, ns: str, name: str, command: list[str]) -> subprocess.Popen:
        with self.lock:
            pod = self._get("pods", ns, name)
            if pod["status"].get("phase") != "Running":
                raise ApiError(400, "BadRequest", f"pod {name} is not running")
            fs: ContainerFS = self.pod_state[(ns, name)]["fs"]
            container = pod["spec"]["containers"][0]
            env = {e["name"]: fs.path(e["value"]) for e in container.get("env", [])}
        argv = [fs.path(arg) for arg in command]
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return subprocess.Popen(
            argv,
            env=env,
            cwd=fs.path(container.get("workingDir", "/")),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )


class ContainerFS:
    """Paths as the container sees them -> folders on this machine. A path under a mount goes to
    the mount's folder; a parent of mounts (like /data holding /data/val) is a folder made of
    them (hard links of read-only files, so no path the program reads is a symlink)."""

    def __init__(self, root: Path, mounts: list[tuple[str, Path, bool]], image_paths: dict[str, Path]) -> None:
        self.root = root
        self.mounts = sorted(mounts, key=lambda m: -len(m[0]))
        self.image_paths = image_paths
        self._composed = False

    def _compose(self) -> None:
        """Make the folder tree of the mounts (only when a path above a mount is used)."""
        if self._composed:
            return
        self._composed = True
        for target, source, read_only in sorted(self.mounts):
            place = self.root / target.lstrip("/")
            place.parent.mkdir(parents=True, exist_ok=True)
            if not read_only:
                place.symlink_to(source, target_is_directory=source.is_dir())
            elif source.is_dir():
                shutil.copytree(source, place, copy_function=_link_or_copy, symlinks=True)
            elif source.exists():
                _link_or_copy(str(source), str(place))

    def path(self, value: str) -> str:
        if not value.startswith("/") or ":" in value:
            return value
        for target, source, _ in self.mounts:
            if value == target or value.startswith(target + "/"):
                return str(source) + value[len(target) :]
        for prefix, folder in self.image_paths.items():
            if value == prefix or value.startswith(prefix + "/"):
                return str(folder) + value[len(prefix) :]
        if any(target.startswith(value.rstrip("/") + "/") for target, _, _ in self.mounts):
            self._compose()
            return str(self.root / value.lstrip("/"))
        return value


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


# ---------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.kube.lock:
            self.kube._connections.add(self.connection)

    def finish(self) -> None:
        with self.kube.lock:
            self.kube._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        kube = self.kube
        with kube.lock:
            kube.requests.append((method, url.path))
        try:
            body = self._body() if method != "GET" else {}
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            route = ROUTE.match(url.path)
            if route is None:
                raise ApiError(404, "NotFound", f"the server could not find {url.path}")
            ns, plural, name, sub = route["ns"], route["plural"], route["name"], route["sub"]
            if plural is None:
                if ns not in kube.namespaces:
                    raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
                return self._json(
                    200,
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}},
                )
            if plural not in KINDS:
                raise ApiError(404, "NotFound", f"no resource {plural}")
            if sub == "log":
                return self._log(ns, name, query)
            if sub == "exec":
                return self._exec(ns, name, parse_qs(url.query))
            if method == "POST":
                return self._json(201, kube._create(plural, ns, body))
            if method == "DELETE":
                propagation = query.get("propagationPolicy") or body.get("propagationPolicy")
                if name is None:
                    for obj in kube.list(plural, query.get("labelSelector")):
                        if obj["metadata"]["namespace"] == ns:
                            try:
                                kube.delete(plural, ns, obj["metadata"]["name"], propagation)
                            except ApiError:
                                pass
                    return self._json(200, status_body(200, "", ""))
                gone = kube.delete(plural, ns, name, propagation)
                if plural in ("pods", "persistentvolumeclaims"):  # these answer with the object
                    return self._json(200, _public(gone))
                return self._json(
                    200,
                    {
                        **status_body(200, "", ""),
                        "details": {"name": name, "kind": plural, "uid": gone["metadata"]["uid"]},
                    },
                )
            if name is not None:
                with kube.lock:
                    return self._json(200, _public(kube._get(plural, ns, name)))
            if query.get("watch") in ("true", "1"):
                return self._watch(ns, plural, query)
            with kube.lock:
                items = [
                    _public(o)
                    for o in kube.list(plural, query.get("labelSelector"))
                    if o["metadata"]["namespace"] == ns
                ]
                api_version, kind = KINDS[plural]
                return self._json(
                    200,
                    {
                        "apiVersion": api_version,
                        "kind": f"{kind}List",
                        "metadata": {"resourceVersion": str(kube.rv)},
                        "items": items,
                    },
                )
        except ApiError as exc:
            self._json(exc.code, status_body(exc.code, exc.reason, exc.message))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    # -- streams ---------------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _watch(self, ns: str, plural: str, query: dict[str, str]) -> None:
        kube = self.kube
        selector = query.get("labelSelector")
        ends = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        self._start_chunked("application/json")
        with kube.lock:
            if query.get("resourceVersion"):
                since = int(query["resourceVersion"])
                pending = []
            else:
                since = kube.rv
                pending = [
                    {"type": "ADDED", "object": _public(o)}
                    for o in kube.list(plural, selector)
                    if o["metadata"]["namespace"] == ns
                ]
        for event in pending:
            self._chunk(json.dumps(event).encode() + b"\n")
        while time.monotonic() < ends and kube._server is not None:
            with kube.lock:
                fresh = [
                    (rv, kind, obj)
                    for rv, p, kind, obj in kube.events
                    if rv > since
                    and p == plural
                    and obj["metadata"]["namespace"] == ns
                    and matches(obj["metadata"].get("labels", {}), selector)
                ]
                since = kube.rv
                if not fresh:
                    kube.changed.wait(min(0.2, max(0.0, ends - time.monotonic())))
            for _, kind, obj in fresh:
                self._chunk(json.dumps({"type": kind, "object": _public(obj)}).encode() + b"\n")
        self._chunk(b"")

    def _log(self, ns: str, name: str, query: dict[str, str]) -> None:
        kube = self.kube
        with kube.lock:
            pod = kube._get("pods", ns, name)
            container = pod["spec"]["containers"][0]["name"]
            state = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
            if "waiting" in state or not state:
                reason = state.get("waiting", {}).get("reason", "PodInitializing")
                raise ApiError(
                    400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {reason}'
                )
            log = kube.pod_state[(ns, name)]["log"]
        if query.get("follow") not in ("true", "1"):
            data = log.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._start_chunked("text/plain")
        with log.open("rb") as fh:
            while kube._server is not None:
                data = fh.read(1 << 16)
                if data:
                    self._chunk(data)
                    continue
                with kube.lock:
                    alive = (ns, name) in kube.processes or (
                        ("pods", ns, name) in kube.objects
                        and kube.objects[("pods", ns, name)]["status"].get("phase") in ("Pending",)
                    )
                if not alive:
                    rest = fh.read()
                    if rest:
                        self._chunk(rest)
                    break
                time.sleep(TICK)
        self._chunk(b"")

    def _exec(self, ns: str, name: str, query: dict[str, list[str]]) -> None:
        if self.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(400, "BadRequest", "Upgrade request required")
        process = self.kube.exec_in(ns, name, query.get("command", []))
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        protocol = next(p for p in offered if p in ("v5.channel.k8s.io", "v4.channel.k8s.io"))
        accept = base64.b64encode(
            hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest()
        ).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.close_connection = True
        assert process.stdout is not None
        try:
            while data := process.stdout.read1(1 << 16):
                self._frame(0x2, b"\x01" + data)
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
        if code == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        self._frame(0x2, b"\x03" + json.dumps(status).encode())
        self._frame(0x8, (1000).to_bytes(2, "big"))

    def _frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + n.to_bytes(2, "big")
        else:
            head += bytes([127]) + n.to_bytes(8, "big")
        self.wfile.write(head + payload)
        self.wfile.flush()


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API shows it (without the fake's own bookkeeping keys)."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
