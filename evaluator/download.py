"""Downloads that survive a bad network: stream to `.part`, resume with Range, retry, verify.

One file at a time:
  1. If the destination exists it is complete (only verified files are ever renamed into place).
  2. Stream the body to `<dest>.part`. When a `.part` is already there (an earlier attempt or an
     earlier run dropped mid-file), ask for the rest with `Range: bytes=<size>-` and append; a
     server that ignores the range (200) makes us start over, one that refuses it (416) too.
  3. Check the size against Content-Length / Content-Range, then the caller's check (for the
     datasets: the file parses as parquet) and the sha256 when it is known.
  4. Rename `.part` to the destination (atomic on one filesystem).
Transient failures (connection errors, timeouts, 408/429/5xx, short bodies, a file that fails
verification) are retried with exponential backoff (tenacity) up to a bounded number of attempts;
a 4xx other than those fails at once. The final failure is one line naming the URL and what to do.

HTTP is the standard library's urllib (which honours the usual proxy environment variables).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

log = structlog.get_logger("evaluator.download")

CHUNK_BYTES = 1 << 20
USER_AGENT = "overnight-prepare/0.1"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download that failed for good; the message is one line for a person."""


class _Transient(Exception):
    """A failure worth another attempt."""


class _Fatal(Exception):
    """A failure no retry will fix (e.g. 404)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # total tries per file, the first included
    backoff_s: float = 2.0  # first wait; doubles each retry
    max_backoff_s: float = 60.0
    timeout_s: float = 60.0  # per socket operation (connect, each read)


@dataclass(frozen=True)
class DownloadJob:
    url: str
    dest: Path
    sha256: str | None = None  # expected hex digest, when known


Verifier = Callable[[Path], None]  # raises ValueError when the file is not what it should be


def download(
    job: DownloadJob, policy: RetryPolicy = RetryPolicy(), verify: Verifier | None = None
) -> Path:
    """Fetch `job.url` to `job.dest` (resuming, retrying, verifying); returns the destination."""
    dest = Path(job.dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s),
        retry=retry_if_exception_type(_Transient),
        before_sleep=_log_retry(job.url),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                _fetch_once(job.url, part, policy.timeout_s)
                _check(part, job.sha256, verify)
    except _Transient as error:
        raise DownloadError(
            f"could not download {job.url} after {policy.attempts} attempts (last: {error}): "
            "check the network or set OVERNIGHT_HF_BASE_URL to a reachable mirror, then re-run "
            "(what was received is kept and resumes)"
        ) from None
    except _Fatal as error:
        raise DownloadError(
            f"could not download {job.url} ({error}): check the URL "
            "(OVERNIGHT_HF_BASE_URL, shard count) and re-run"
        ) from None
    os.replace(part, dest)
    log.info("downloaded", url=job.url, bytes=dest.stat().st_size)
    return dest


def download_all(
    jobs: Sequence[DownloadJob],
    policy: RetryPolicy = RetryPolicy(),
    verify: Verifier | None = None,
    workers: int = 4,
) -> list[Path]:
    """Download several files in parallel threads; the first failure is raised."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        return list(pool.map(lambda job: download(job, policy, verify), jobs))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_once(url: str, part: Path, timeout_s: float) -> None:
    """One attempt: append the missing bytes to `part`; raise _Transient if it is not complete."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            part.unlink()
            raise _Transient("the server refused to resume; starting over") from None
        if error.code in RETRY_STATUSES:
            raise _Transient(f"HTTP {error.code} {error.reason}") from None
        raise _Fatal(f"HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Transient(_describe(error)) from None
    with response:
        start, total = _body_range(response, offset)
        mode = "ab" if start else "wb"
        with open(part, mode) as handle:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
            except (OSError, http.client.HTTPException) as error:
                got = handle.tell()
                raise _Transient(f"connection lost at byte {got} ({_describe(error)})") from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Transient(f"connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise _Transient(f"received {size} bytes but {total} were announced; starting over")


def _body_range(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Where this response's body starts in the file, and the file's full size if announced."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != offset:
            raise _Transient("the server sent an unexpected Content-Range; retrying")
        return offset, None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _check(part: Path, sha256: str | None, verify: Verifier | None) -> None:
    """Verify a complete `.part`; a bad one is deleted and the download retried from scratch."""
    problem = None
    if sha256 is not None and sha256_file(part) != sha256.lower():
        problem = "sha256 mismatch"
    elif verify is not None:
        try:
            verify(part)
        except ValueError as error:
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
    if problem:
        part.unlink()
        raise _Transient(f"the downloaded file failed verification: {problem}")


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    text = str(reason if reason is not None else error) or type(error).__name__
    return text.splitlines()[0]


def _log_retry(url: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("download retry", url=url, attempt=state.attempt_number, error=str(error),
                    wait_s=round(wait, 3))

    return before_sleep
