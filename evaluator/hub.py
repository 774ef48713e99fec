"""The Hugging Face hub's metadata API: which commit a branch is at, and what each file should be.

Downloads come from `{endpoint}/datasets/{repo}/resolve/{commit}/{file}` (the hub, or a mirror
serving the same paths); the sha256 and size each file must have come from the hub's API, asked
separately, so a mirror or proxy on the download path cannot choose both the bytes and their hash.
Two calls, as the hub answers them:
  GET  {api}/api/datasets/{repo}/revision/{branch}    -> {"id": ..., "sha": "<40 hex>", ...}
  POST {api}/api/datasets/{repo}/paths-info/{commit}  form: paths=<file> (repeated)
       -> [{"type": "file", "path": ..., "size": N, "oid": "<git blob id>",
            "lfs": {"oid": "<sha256 hex>", "size": N, "pointerSize": P}}, ...]
The LFS object id is the sha256 of the file's content. A file the hub holds without LFS, or does
not list, has no published hash and is refused. Every answer is hostile until checked: only a
well-formed commit, hash and size are taken from it, and none of its text reaches a message.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluator.download import MAX_FILE_BYTES, DownloadError, RetryPolicy, fetch_json

HF_ENDPOINT = "https://huggingface.co"
PATHS_PER_REQUEST = 100  # paths-info is asked in batches of this many files
API_HINT = "check the network and OVERNIGHT_HF_API_URL (the hub's API), then re-run"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PublishedFile:
    """A file as the hub publishes it at one commit."""

    name: str
    sha256: str  # the LFS object id
    size: int


def resolve_revision(api: str, repo: str, revision: str, policy: RetryPolicy) -> str:
    """The commit sha that `revision` (a branch or tag) of dataset `repo` points at now."""
    url = f"{_api_base(api, repo)}/revision/{urllib.parse.quote(revision, safe='')}"
    answer = fetch_json(
        url,
        policy,
        hint=f"check the dataset name ({repo}), its revision ({revision}) and OVERNIGHT_HF_API_URL, then re-run",
    )
    sha = answer.get("sha") if isinstance(answer, dict) else None
    if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
        raise DownloadError(
            f"the hub's answer for {repo} at {revision} has no commit sha: "
            f"check OVERNIGHT_HF_API_URL points at the hub's API"
        )
    return sha


def published_files(
    api: str, repo: str, commit: str, names: Sequence[str], policy: RetryPolicy
) -> dict[str, PublishedFile]:
    """The published sha256 and size of each of `names` in dataset `repo` at `commit`."""
    url = f"{_api_base(api, repo)}/paths-info/{commit}"
    entries: dict[str, Any] = {}
    for first in range(0, len(names), PATHS_PER_REQUEST):
        batch = names[first : first + PATHS_PER_REQUEST]
        answer = fetch_json(url, policy, form=[("paths", name) for name in batch], hint=API_HINT)
        if not isinstance(answer, list):
            raise DownloadError(f"the hub's file list for {repo} is not a list: {API_HINT}")
        wanted = set(batch)
        for entry in answer:
            if isinstance(entry, dict) and entry.get("path") in wanted:
                entries[entry["path"]] = entry
    return {name: _published(name, entries.get(name), repo, commit) for name in names}


def resolve_url(endpoint: str, repo: str, commit: str, name: str) -> str:
    """Where `name` of dataset `repo` at `commit` is downloaded from."""
    return f"{endpoint.rstrip('/')}/datasets/{repo}/resolve/{commit}/{urllib.parse.quote(name)}"


def _api_base(api: str, repo: str) -> str:
    return f"{api.rstrip('/')}/api/datasets/{repo}"


def _published(name: str, entry: Any, repo: str, commit: str) -> PublishedFile:
    if entry is None:
        raise DownloadError(
            f"the hub lists no {name} in {repo} at commit {commit[:12]}: check "
            f"the dataset name/revision and the shard count (--train-shards)"
        )
    lfs = entry.get("lfs")
    if not isinstance(lfs, dict):
        raise DownloadError(f"the hub published no LFS hash for {name}: check the dataset name/revision")
    oid, size = lfs.get("oid"), lfs.get("size")
    if (
        not isinstance(oid, str)
        or not _SHA256.fullmatch(oid)
        or type(size) is not int
        or not 0 <= size <= MAX_FILE_BYTES
        or entry.get("size", size) != size
    ):
        raise DownloadError(
            f"the hub's LFS entry for {name} is malformed or over the {MAX_FILE_BYTES}-byte cap: {API_HINT}"
        )
    return PublishedFile(name=name, sha256=oid, size=size)
