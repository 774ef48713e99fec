"""A stand-in for the Hugging Face hub: a real HTTP server on 127.0.0.1 serving files from memory.

It answers the hub's two metadata calls with the hub's JSON shapes, and the files at their
`resolve/<revision>/<file>` URLs (HTTP/1.1 with Range support):
  GET  /api/datasets/<repo>/revision/<main|commit>    -> {"id": ..., "sha": <commit>, ...}
  POST /api/datasets/<repo>/paths-info/<main|commit>  form paths=<file> (repeated)
       -> [{"type": "file", "oid": <git blob id>, "size": N, "path": ...,
            "lfs": {"oid": <sha256>, "size": N, "pointerSize": 134}}, ...]
  GET  /datasets/<repo>/resolve/<main|commit>/<file>
What the API publishes for a file is its real sha256 and size unless the test says otherwise
(`Published`: another hash or size, no LFS entry, or not listed at all), so a server can play an
honest hub, a lying hub, or a mirror that serves other bytes than the hub publishes. The file
server can be told to misbehave per file, one scripted action per request:
  "ok"           serve the file (or the requested range) completely
  "drop:N"       announce the full length, send N bytes of the body, then close the connection
  "status:CODE"  answer with an error status and no body
  "norange"      serve the whole file with 200, ignoring any Range header
  "pad:N"        serve the file with N junk bytes appended (and a Content-Length that says so)
  "endless"      no Content-Length: send the file, then junk until the client hangs up
When a file's script runs out, requests are served "ok". Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = "karpathy/climbmix-400b-shuffle"
COMMIT = "5e1f0c0ffee0ddba11c0de5ca1ab1e0b5e55ed00"
ENDLESS_CHUNK = 64 << 10
ENDLESS_MAX = 1 << 30  # even "endless" stops somewhere if the client never hangs up
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class Published:
    """What the hub's API says about a file: `sha256` None means no LFS entry."""

    sha256: str | None
    size: int

    @classmethod
    def of(cls, data: bytes) -> Published:
        return cls(hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class Request:
    name: str
    range: str | None
    status: int
    revision: str | None = None  # the revision in a resolve URL


@dataclass(frozen=True)
class ApiCall:
    kind: str  # "revision" or "paths-info"
    revision: str
    paths: tuple[str, ...] = ()


class HubServer:
    def __init__(self, repo: str = REPO, commit: str = COMMIT) -> None:
        self.repo = repo
        self.commit = commit
        self.files: dict[str, bytes] = {}
        self.published: dict[str, Published | None] = {}  # None: the API does not list it
        self.scripts: dict[str, list[str]] = {}
        self.revision_answer: object | None = None  # replaces the revision call's JSON
        self.requests: list[Request] = []
        self.api_calls: list[ApiCall] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def endpoint(self) -> str:
        """The hub's address, for OVERNIGHT_HF_BASE_URL and OVERNIGHT_HF_API_URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str, revision: str | None = None) -> str:
        return f"{self.endpoint}/datasets/{self.repo}/resolve/{revision or self.commit}/{name}"

    # -- configuration ------------------------------------------------------------------------

    def add(
        self,
        name: str,
        data: bytes,
        script: Sequence[str] = (),
        published: Published | None = None,
        listed: bool = True,
    ) -> None:
        """Serve `data` as `name`; the API publishes its real hash and size, or `published`,
        or (listed=False) does not list it at all."""
        with self._lock:
            self.files[name] = data
            self.published[name] = (published or Published.of(data)) if listed else None
            self.scripts[name] = list(script)

    def requests_for(self, name: str) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.name == name]

    # -- answers ------------------------------------------------------------------------------

    def _next_action(self, name: str) -> str:
        with self._lock:
            script = self.scripts.get(name, [])
            return script.pop(0) if script else "ok"

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _log_api(self, call: ApiCall) -> None:
        with self._lock:
            self.api_calls.append(call)

    def _revision_info(self) -> object:
        if self.revision_answer is not None:
            return self.revision_answer
        return {
            "_id": "66d0f1a2b3c4d5e6f7a8b9c0",
            "id": self.repo,
            "author": self.repo.split("/")[0],
            "sha": self.commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [{"rfilename": name} for name in sorted(self.files)],
        }

    def _paths_info(self, paths: Sequence[str]) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for path in paths:
            data, published = self.files.get(path), self.published.get(path)
            if data is None or published is None:
                continue
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            entry: dict[str, object] = {"type": "file", "oid": blob, "size": published.size, "path": path}
            if published.sha256 is not None:
                entry["lfs"] = {"oid": published.sha256, "size": published.size, "pointerSize": 134}
            entries.append(entry)
        return entries

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                api = f"/api/datasets/{hub.repo}/revision/"
                if self.path.startswith(api):
                    revision = urllib.parse.unquote(self.path[len(api) :])
                    hub._log_api(ApiCall("revision", revision))
                    if revision not in ("main", hub.commit):
                        return self._json({"error": "Invalid rev id: " + revision}, 404)
                    return self._json(hub._revision_info())
                resolve = f"/datasets/{hub.repo}/resolve/"
                if not self.path.startswith(resolve):
                    return self._status("?", 404)
                revision, _, name = self.path[len(resolve) :].partition("/")
                name = urllib.parse.unquote(name)
                data = hub.files.get(name)
                if data is None or revision not in ("main", hub.commit):
                    return self._status(name, 404, revision=revision)
                self._serve_file(name, data, revision)

            def do_POST(self) -> None:
                api = f"/api/datasets/{hub.repo}/paths-info/"
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode("ascii", "replace"))
                if not self.path.startswith(api):
                    return self._status("?", 404)
                revision = urllib.parse.unquote(self.path[len(api) :])
                paths = form.get("paths", [])
                hub._log_api(ApiCall("paths-info", revision, tuple(paths)))
                if revision not in ("main", hub.commit):
                    return self._json({"error": "Invalid rev id: " + revision}, 404)
                self._json(hub._paths_info(paths))

            def _serve_file(self, name: str, data: bytes, revision: str) -> None:
                action = hub._next_action(name)
                if action.startswith("status:"):
                    return self._status(name, int(action.split(":", 1)[1]), revision=revision)
                if action.startswith("pad:"):
                    data = data + b"\0" * int(action.split(":", 1)[1])
                if action == "endless":
                    return self._endless(name, data, revision)
                start, end = 0, len(data)
                wanted = self.headers.get("Range")
                partial = wanted is not None and action != "norange"
                if partial:
                    match = _RANGE.fullmatch(wanted.strip())
                    if not match or int(match.group(1)) >= len(data):
                        return self._status(name, 416, wanted, revision)
                    start = int(match.group(1))
                    end = int(match.group(2)) + 1 if match.group(2) else len(data)
                body = data[start:end]
                status = 206 if partial else 200
                hub._log(Request(name, wanted, status, revision))
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if action.startswith("drop:"):
                    self.wfile.write(body[: int(action.split(":", 1)[1])])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _endless(self, name: str, data: bytes, revision: str) -> None:
                hub._log(Request(name, self.headers.get("Range"), 200, revision))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                junk, sent = b"\0" * ENDLESS_CHUNK, 0
                try:
                    self.wfile.write(data)
                    while sent < ENDLESS_MAX and not hub._stopping.is_set():
                        self.wfile.write(junk)
                        sent += len(junk)
                except OSError:  # the client hung up, as it should
                    pass

            def _json(self, answer: object, code: int = 200) -> None:
                body = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _status(self, name: str, code: int, wanted: str | None = None, revision: str | None = None) -> None:
                hub._log(Request(name, wanted or self.headers.get("Range"), code, revision))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


# -- parquet files for the tests ------------------------------------------------------------------

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "pe",
    "dan",
    "mor",
    "gil",
    "tes",
    "ar",
    "el",
    "on",
    "ux",
    "qui",
    "bra",
    "sto",
]


def synthetic_texts(seed: int, count: int, words: int = 120) -> list[str]:
    """Deterministic English-looking documents with enough structure for a small BPE."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    texts = []
    for index in range(count):
        lines = []
        for _ in range(max(1, words // 12)):
            sentence = " ".join(rng.choice(lexicon) for _ in range(rng.randint(6, 16)))
            lines.append(f"{sentence.capitalize()}, {rng.randint(0, 9999)}.")
        texts.append(f"Document {seed}-{index}: " + "\n".join(lines) + "\n")
    return texts


def parquet_bytes(texts: Sequence[str], column: str = "text", row_group_size: int = 64) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({column: list(texts)}), sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def write_parquet(path: Path, texts: Sequence[str], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(parquet_bytes(texts, column))
    return path
