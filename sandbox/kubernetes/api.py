"""The Kubernetes API connection (the official `kubernetes` client) and its errors, said in one
line: what failed, and what to do."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError

TIMEOUT = (10, 60)  # (connect, read) seconds of an ordinary call
RBAC_HINT = "give the controller's account the Role in docs/kubernetes.md"


def api_client(kubeconfig: Path | None = None) -> Any:
    """A client for the cluster of `kubeconfig` (default: $KUBECONFIG or ~/.kube/config, or the
    pod's own service account when the controller itself runs in the cluster)."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise SandboxError(
            "the kubernetes backend needs the kubernetes client: pip install 'overnight[kubernetes]'"
        ) from None
    try:
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
            return client.ApiClient()
        if kubeconfig is not None and not Path(kubeconfig).is_file():
            raise SandboxError(f"kubeconfig {kubeconfig} is not a file: set --kube-config")
        return config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)
    except config.ConfigException as exc:
        raise SandboxError(f"cannot load the Kubernetes config ({exc}): set --kube-config or KUBECONFIG") from None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (None: no answer at all)."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status or None
    return None


def message_of(exc: BaseException) -> str:
    """The API server's own one-line message, or the connection error's."""
    import json

    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        try:
            text = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            text = exc.reason
        return "".join(ch for ch in str(text) if ch.isprintable())[:300]
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def error(what: str, exc: BaseException) -> SandboxError:
    """One line for a failed API call: not allowed, unreachable, or the server's message."""
    code = status_of(exc)
    if code in (401, 403):
        return SandboxError(f"{what}: not allowed ({message_of(exc)}): {RBAC_HINT}")
    if code is None:
        return SandboxError(f"{what}: the Kubernetes API is unreachable ({message_of(exc)})")
    return SandboxError(f"{what}: {message_of(exc)}")


def call(what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
    """fn(*args) with the ordinary timeout; every failure becomes one SandboxError line
    (a 404 becomes None when missing_ok)."""
    kwargs.setdefault("_request_timeout", TIMEOUT)
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if missing_ok and status_of(exc) == 404:
            return None
        raise error(what, exc) from None
