"""A stand-in for the Hugging Face hub: a real HTTP server on 127.0.0.1 serving files from memory.

It speaks plain HTTP/1.1 with Range support, like the hub's `resolve/main/<file>` URLs, and can
be told to misbehave per file, one scripted action per request:
  "ok"           serve the file (or the requested range) completely
  "drop:N"       announce the full length, send N bytes of the body, then close the connection
  "status:CODE"  answer with an error status and no body
  "norange"      serve the whole file with 200, ignoring any Range header
When a file's script runs out, requests are served "ok". Every request is logged.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class Request:
    name: str
    range: str | None
    status: int


class HubServer:
    def __init__(self, prefix: str = "/datasets/karpathy/climbmix-400b-shuffle/resolve/main") -> None:
        self.prefix = prefix.rstrip("/")
        self.files: dict[str, bytes] = {}
        self.scripts: dict[str, list[str]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    # -- configuration ------------------------------------------------------------------------

    def add(self, name: str, data: bytes, script: Sequence[str] = ()) -> None:
        with self._lock:
            self.files[name] = data
            self.scripts[name] = list(script)

    def requests_for(self, name: str) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.name == name]

    # -- serving ------------------------------------------------------------------------------

    def _next_action(self, name: str) -> str:
        with self._lock:
            script = self.scripts.get(name, [])
            return script.pop(0) if script else "ok"

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if not self.path.startswith(hub.prefix + "/"):
                    return self._status("?", 404)
                name = self.path[len(hub.prefix) + 1 :]
                data = hub.files.get(name)
                if data is None:
                    return self._status(name, 404)
                action = hub._next_action(name)
                if action.startswith("status:"):
                    return self._status(name, int(action.split(":", 1)[1]))
                start, end = 0, len(data)
                wanted = self.headers.get("Range")
                partial = wanted is not None and action != "norange"
                if partial:
                    match = _RANGE.fullmatch(wanted.strip())
                    if not match or int(match.group(1)) >= len(data):
                        return self._status(name, 416, wanted)
                    start = int(match.group(1))
                    end = int(match.group(2)) + 1 if match.group(2) else len(data)
                body = data[start:end]
                status = 206 if partial else 200
                hub._log(Request(name, wanted, status))
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

            def _status(self, name: str, code: int, wanted: str | None = None) -> None:
                hub._log(Request(name, wanted or self.headers.get("Range"), code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


# -- parquet files for the tests ------------------------------------------------------------------

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "pe", "dan", "mor", "gil", "tes",
              "ar", "el", "on", "ux", "qui", "bra", "sto"]


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
