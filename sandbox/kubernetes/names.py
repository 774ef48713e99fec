"""Kubernetes names and labels for the sandbox's objects, derived from a run id and nothing else,
so the controller's cleanup after a crash finds everything by label (never by guess).

Run ids may hold upper case, '_' and '.', and be longer than a label value may be; those get a
readable slug plus a hash of the whole id. The raw id travels in an annotation for people.
"""

from __future__ import annotations

import hashlib
import re

from sandbox.specs import LABEL_ROLE, LABEL_RUN

LABEL_POD = "overnight.pod"  # job | fetch | verify | prepare: what a pod is for
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "overnight"
ANNOTATION_RUN_ID = "overnight.run-id"

__all__ = [
    "LABEL_POD",
    "LABEL_ROLE",
    "LABEL_RUN",
    "label_value",
    "object_name",
    "run_key",
    "selector",
    "valid_label_key",
]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KEY_MAX = 40  # overnight-<key>-train-out-fetch stays a valid pod name


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_key(run_id: str) -> str:
    """The run's name on the cluster: the id itself when it is a short DNS label, else a slug
    of it plus 8 hex digits of its hash (so 'Tag_1' and 'tag-1' stay apart)."""
    if len(run_id) <= KEY_MAX and _DNS_LABEL.match(run_id):
        return run_id
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[: KEY_MAX - 9].strip("-")
    return f"{slug}-{_digest(run_id)}" if slug else f"run-{_digest(run_id)}"


def label_value(value: str) -> str:
    """`value` when it is a valid label value, else a slug plus a hash of it."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:54].strip("-_.")
    return f"{slug}-{_digest(value)}" if slug else _digest(value)


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def object_name(run_id: str, role: str, suffix: str = "") -> str:
    """overnight-<key>-<role>[-<suffix>]: Jobs, volumes, config maps and pods of one job."""
    return "-".join(part for part in ("overnight", run_key(run_id), role, suffix) if part)


def selector(labels: dict[str, str]) -> str:
    """A label selector matching every pair of `labels`."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
