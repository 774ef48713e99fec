"""Downloads that survive a bad network and a bad mirror: bounded, resumed, retried, verified.

One file at a time:
  1. If the destination exists it was verified when it was renamed into place; it is verified
     again against the expected size and sha256 before it is reused, and fetched anew if it no
     longer matches.
  2. Stream the body to `<dest>.part`. When a `.part` is already there (an earlier attempt or an
     earlier run dropped mid-file), ask for the rest with `Range: bytes=<size>-` and append; a
     server that ignores the range (200) makes us start over, one that refuses it (416) too. A
     `.part` already larger than the file can be is discarded.
  3. Bounds: a file never grows past its expected size (or MAX_FILE_BYTES when no size is known).
     A Content-Length or Content-Range total other than the expected size is refused before the
     body is read, and a body that runs past it is cut off at once and its `.part` deleted.
  4. Verify: the size, the sha256 when it is known, then the caller's check (for the datasets:
     the file parses as parquet).
  5. Rename `.part` to the destination (atomic on one filesystem).
Transient failures (connection errors, timeouts, 408/429/5xx, short bodies, a resumed file that
fails verification) are retried with exponential backoff (tenacity) up to a bounded number of
attempts; a 4xx other than those fails at once. A server that sends something other than the
expected file (wrong size, or wrong bytes in one whole response) is refused at once: no retry
of a mirror that lies. The final failure is one line naming the URL and what to do.

`fetch_json` reads a small JSON answer (a metadata API) with the same retries and a size cap.
HTTP is the standard library's urllib (which honours the usual proxy environment variables).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
MAX_FILE_BYTES = 4 << 30  # no single download grows past this, whatever a server announces
MAX_JSON_BYTES = 8 << 20  # a metadata answer larger than this is refused
USER_AGENT = "overnight-prepare/0.1"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MIRROR_HINT = "the mirror or proxy sent something else; check OVERNIGHT_HF_BASE_URL"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download that failed for good; the message is one line for a person."""


class _Transient(Exception):
    """A failure worth another attempt."""


class _Fatal(Exception):
    """A failure no retry will fix (e.g. 404)."""


class _Refused(Exception):
    """The server sent something other than the expected file; the message says what to do."""


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
    size: int | None = None  # expected bytes, when known
    max_bytes: int = MAX_FILE_BYTES  # the cap when no size is known

    @property
    def limit(self) -> int:
        """The most bytes this file may have."""
        return self.size if self.size is not None else self.max_bytes


Verifier = Callable[[Path], None]  # raises ValueError when the file is not what it should be


def download(job: DownloadJob, policy: RetryPolicy = RetryPolicy(), verify: Verifier | None = None) -> Path:
    """Fetch `job.url` to `job.dest` (bounded, resuming, retrying, verifying); returns the
    destination."""
    dest = Path(job.dest)
    if job.size is not None and not 0 <= job.size <= job.max_bytes:
        raise DownloadError(
            f"{dest.name} is published as {job.size} bytes, over the "
            f"{job.max_bytes}-byte cap for one download: check the dataset"
        )
    if dest.is_file():
        if _is_expected(dest, job):
            return dest
        log.warning("cached file differs from its published hash; fetching it again", path=str(dest))
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        for attempt in _retrying(policy, job.url):
            with attempt:
                fresh = _fetch_once(job, part, policy.timeout_s)
                _check(part, job, verify, fresh)
    except _Transient as error:
        raise DownloadError(
            f"could not download {job.url} after {policy.attempts} attempts (last: {error}): "
            "check the network or set OVERNIGHT_HF_BASE_URL to a reachable mirror, then re-run "
            "(what was received is kept and resumes)"
        ) from None
    except _Refused as error:
        part.unlink(missing_ok=True)
        raise DownloadError(f"refused {job.url}: {error}") from None
    except _Fatal as error:
        raise DownloadError(
            f"could not download {job.url} ({error}): check the URL (OVERNIGHT_HF_BASE_URL, shard count) and re-run"
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


def fetch_json(
    url: str,
    policy: RetryPolicy = RetryPolicy(),
    form: Sequence[tuple[str, str]] | None = None,
    hint: str = "check the network and the address, then re-run",
) -> Any:
    """GET `url` (POST `form`, URL-encoded, when given) and parse the JSON answer, retrying
    transient failures; an answer over MAX_JSON_BYTES is refused. Errors end with `hint`."""
    data = urllib.parse.urlencode(list(form)).encode("ascii") if form is not None else None
    try:
        for attempt in _retrying(policy, url):
            with attempt:
                return _json_once(url, data, policy.timeout_s)
    except _Transient as error:
        raise DownloadError(f"could not read {url} after {policy.attempts} attempts (last: {error}): {hint}") from None
    except (_Fatal, _Refused) as error:
        raise DownloadError(f"could not read {url} ({error}): {hint}") from None
    raise AssertionError("unreachable: tenacity either returns or raises")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _retrying(policy: RetryPolicy, url: str) -> Retrying:
    return Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s),
        retry=retry_if_exception_type(_Transient),
        before_sleep=_log_retry(url),
        reraise=True,
    )


def _is_expected(path: Path, job: DownloadJob) -> bool:
    """Whether a file already in place still has the expected size and sha256."""
    if job.size is not None and path.stat().st_size != job.size:
        return False
    return job.sha256 is None or sha256_file(path) == job.sha256.lower()


def _fetch_once(job: DownloadJob, part: Path, timeout_s: float) -> bool:
    """One attempt: append the missing bytes to `part`, never past `job.limit`; raise _Transient
    if it is not complete. Returns whether the whole file came in this one response."""
    offset = part.stat().st_size if part.is_file() else 0
    if offset > job.limit:
        log.warning("discarding a .part larger than the file can be", path=str(part), bytes=offset)
        part.unlink()
        offset = 0
    if offset and offset == job.size:
        return False  # complete from an earlier attempt; verification decides
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(job.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            part.unlink()
            raise _Transient("the server refused to resume; starting over") from None
        raise _status_error(error.code, error.reason) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Transient(_describe(error)) from None
    with response:
        start, total = _body_range(response, offset)
        if total is not None:
            _check_announced(job, part, total)
        over = False
        with open(part, "ab" if start else "wb") as handle:
            written = start
            try:  # read at most one byte past the limit, so an endless body is noticed at once
                while chunk := response.read(min(CHUNK_BYTES, job.limit - written + 1)):
                    if written + len(chunk) > job.limit:
                        over = True
                        break
                    handle.write(chunk)
                    written += len(chunk)
            except (OSError, http.client.HTTPException) as error:
                raise _Transient(f"connection lost at byte {written} ({_describe(error)})") from None
    if over:
        part.unlink()
        raise _Refused(_over_limit(job))
    size = part.stat().st_size
    expected = total if total is not None else job.size
    if expected is not None and size < expected:
        raise _Transient(f"connection closed after {size} of {expected} bytes")
    if expected is not None and size > expected:
        part.unlink()
        raise _Transient(f"received {size} bytes but {expected} were announced; starting over")
    return start == 0


def _check_announced(job: DownloadJob, part: Path, total: int) -> None:
    """Refuse a response whose announced file size is not the expected one, before its body."""
    name = Path(job.dest).name
    if job.size is not None and total != job.size:
        part.unlink(missing_ok=True)
        raise _Refused(f"{name} is announced as {total} bytes, but its published size is {job.size}: {MIRROR_HINT}")
    if total > job.max_bytes:
        part.unlink(missing_ok=True)
        raise _Refused(
            f"{name} is announced as {total} bytes, over the {job.max_bytes}-byte cap for one download: {MIRROR_HINT}"
        )


def _over_limit(job: DownloadJob) -> str:
    name = Path(job.dest).name
    if job.size is not None:
        return f"{name} ran past its published size of {job.size} bytes: {MIRROR_HINT}"
    return f"{name} ran past the {job.max_bytes}-byte cap for one download: {MIRROR_HINT}"


def _body_range(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Where this response's body starts in the file, and the file's full size if announced."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != offset:
            raise _Transient("the server sent an unexpected Content-Range; retrying")
        return offset, None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _check(part: Path, job: DownloadJob, verify: Verifier | None, fresh: bool) -> None:
    """Verify a complete `.part`; a bad one is deleted. Wrong bytes in one whole response are
    refused (the server sends the wrong file); after a resume they are retried from scratch (the
    earlier part may be stale)."""
    if job.sha256 is not None:
        got = sha256_file(part)
        if got != job.sha256.lower():
            part.unlink()
            if fresh:
                raise _Refused(
                    f"sha256 mismatch: {Path(job.dest).name} hashes to {got[:16]}..., "
                    f"its published sha256 is {job.sha256[:16]}...: {MIRROR_HINT}"
                )
            raise _Transient("sha256 mismatch after resuming; starting over")
    if verify is not None:
        try:
            verify(part)
        except ValueError as error:
            part.unlink()
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise _Transient(f"the downloaded file failed verification: {problem}") from None


def _json_once(url: str, data: bytes | None, timeout_s: float) -> Any:
    request = urllib.request.Request(url, data=data, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        raise _status_error(error.code, error.reason) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Transient(_describe(error)) from None
    with response:
        body = bytearray()
        try:
            while chunk := response.read(min(CHUNK_BYTES, MAX_JSON_BYTES + 1 - len(body))):
                body += chunk
                if len(body) > MAX_JSON_BYTES:
                    raise _Refused(f"the answer is over {MAX_JSON_BYTES} bytes")
        except (OSError, http.client.HTTPException) as error:
            raise _Transient(f"connection lost ({_describe(error)})") from None
    try:
        return json.loads(body)
    except ValueError:
        raise _Fatal("the answer is not JSON") from None


def _status_error(code: int, reason: object) -> Exception:
    text = f"HTTP {code} {str(reason).splitlines()[0] if str(reason) else ''}".strip()
    return _Transient(text) if code in RETRY_STATUSES else _Fatal(text)


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    text = str(reason if reason is not None else error) or type(error).__name__
    return text.splitlines()[0]


def _log_retry(url: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("download retry", url=url, attempt=state.attempt_number, error=str(error), wait_s=round(wait, 3))

    return before_sleep
