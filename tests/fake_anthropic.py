"""A fake Anthropic Messages API on 127.0.0.1, for driving the real `anthropic` client in tests.

It speaks the real wire format: POST /v1/messages with a JSON body; a `message` object with
content blocks (`text`, `tool_use`), a `stop_reason` and `usage` back; errors as
`{"type": "error", "error": {"type": ..., "message": ...}}` with their real status codes (429
rate_limit_error, 529 overloaded_error, 500 api_error, 401 authentication_error, 400
invalid_request_error) and headers such as `retry-after`.

What it answers is a script: a queue of steps, one per request, then (once the queue is empty) an
optional `responder` called with the request body (a scripted model that reads what it was sent),
then an optional default step. It also checks requests the way the real API does where a client bug
would show (the API key, as x-api-key or a bearer token, and the version header, a tool_result for
every tool_use of the previous turn, at most 4 cache breakpoints, well-formed tool definitions), and
answers 400 when they fail.

Prompt caching is simulated so a test can see whether the cached prefix really stays the same
and whether it is still alive: the request is cut at each `cache_control` breakpoint (tools, then
system, then messages, as the API orders them); a prefix cached before and still within its
lifetime counts as `cache_read_input_tokens` (and the read refreshes the lifetime), the rest up to
the last breakpoint as `cache_creation_input_tokens`, split by lifetime in `usage.cache_creation`.
As in the API, a breakpoint finds a cached prefix ending at itself or at one of the 20 blocks
before it (`LOOKBACK_BLOCKS`), and entries are written only at breakpoints
(`ttl` "5m", the default, or "1h"; a 1h breakpoint after a 5m one is refused, as the API does).
A prefix shorter than `min_cacheable_tokens` is not cached. Time is `clock()` (injectable, so a
test moves it on instead of sleeping). Tokens are estimated as bytes / 4.

Output is limited as the API limits it: a reply longer than the request's `max_tokens` is cut
there, with stop_reason `max_tokens` (a text block is shortened; a tool_use block that does not
fit is returned cut off, with an incomplete (empty) input).

Every request is recorded (headers, JSON body, time) for assertions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20  # a breakpoint also finds a prefix cached at one of the 20 blocks before it
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


# --- script steps ----------------------------------------------------------------------------


@dataclass
class Reply:
    """A 200 `message` with these content blocks."""

    content: list[dict[str, Any]]
    stop_reason: str | None = None  # default: tool_use when a tool_use block is there, else end_turn
    usage: dict[str, int] | None = None  # default: simulated from the request


@dataclass
class Error:
    """An error response with the real body shape."""

    status: int
    error_type: str
    message: str = "fake error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    """Any status, body and headers (e.g. a body that is not JSON)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Slow:
    """Wait `seconds` before answering with `then` (the client has usually given up by then)."""

    seconds: float
    then: Reply | Error | Raw


Step = Reply | Error | Raw | Slow

_ids = itertools.count(1)


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, input: Any, id: str | None = None) -> dict[str, Any]:  # noqa: A002
    return {"type": "tool_use", "id": id or f"toolu_fake{next(_ids):06d}", "name": name, "input": input}


def rate_limited(retry_after: str | None = "1") -> Error:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", headers)


def overloaded() -> Error:
    return Error(529, "overloaded_error", "Overloaded")


def server_error() -> Error:
    return Error(500, "api_error", "Internal server error")


def refusal(said: str = "") -> Reply:
    return Reply([text(said)] if said else [], stop_reason="refusal")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    raw: bytes
    at: float  # the server's clock() when received


# --- the server ------------------------------------------------------------------------------


Responder = Callable[[dict[str, Any]], "Step | None"]


class FakeAnthropic:
    def __init__(
        self,
        api_key: str = "test-key",
        default: Step | None = None,
        *,
        responder: Responder | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_cacheable_tokens: int = 1024,
    ) -> None:
        self.api_key = api_key
        self.default = default
        self.responder = responder
        self.clock = clock
        self.min_cacheable_tokens = min_cacheable_tokens
        self.requests: list[Recorded] = []
        self.usages: list[dict[str, Any]] = []  # the usage of every 200 message answered, in order
        self._script: deque[Step] = deque()
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, float]] = {}  # prefix key -> (expiry on clock(), lifetime)
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-anthropic", daemon=True
        )

    # lifecycle
    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # scripting
    def enqueue(self, *steps: Step) -> None:
        with self._lock:
            self._script.extend(steps)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    def message_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    # one request
    def _next_step(self, body: dict[str, Any]) -> Step | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            step = self.responder(body)
            if step is not None:
                return step
        return self.default

    def _answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(Recorded(method, path, headers, body, raw, self.clock()))
        if method != "POST" or path != "/v1/messages":
            return _error(404, "not_found_error", f"no route {method} {path}")
        if self.api_key not in (headers.get("x-api-key"), _bearer(headers.get("authorization"))):
            return _error(401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        problem = validate_request(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        step = self._next_step(body)
        if step is None:
            return _error(400, "invalid_request_error", "fake server: script exhausted")
        if isinstance(step, Slow):
            if self._stopping.wait(step.seconds):
                return 503, {}, b""
            step = step.then
        return self._render(step, body)

    def _render(self, step: Reply | Error | Raw, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if isinstance(step, Raw):
            return step.status, step.headers, step.body
        if isinstance(step, Error):
            status, headers, payload = _error(step.status, step.error_type, step.message)
            return status, {**headers, **step.headers}, payload
        content, stop = step.content, step.stop_reason
        if stop is None:
            content, cut = _within_max_tokens(content, body["max_tokens"])
            if cut:
                stop = "max_tokens"
        has_tool = any(block.get("type") == "tool_use" for block in content)
        usage = step.usage or self._simulated_usage(body, content)
        if stop == "max_tokens" and step.usage is None:
            usage["output_tokens"] = body["max_tokens"]
        with self._lock:
            self.usages.append(usage)
        message = {
            "id": f"msg_fake{next(_ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": stop or ("tool_use" if has_tool else "end_turn"),
            "stop_sequence": None,
            "usage": usage,
        }
        return (
            200,
            {"content-type": "application/json", "request-id": f"req_fake{next(_ids):06d}"},
            json.dumps(message).encode(),
        )

    def _simulated_usage(self, body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, Any]:
        segments, breakpoints = _segments(body)
        total = _tokens(segments)
        now = self.clock()
        read = 0
        written = {"5m": 0, "1h": 0}
        with self._lock:
            for i, _ in breakpoints:  # the longest live prefix at a breakpoint or up to 20 blocks before it
                for j in range(i, max(-1, i - LOOKBACK_BLOCKS - 1), -1):
                    key = _prefix_key(segments[: j + 1])
                    entry = self._cache.get(key)
                    if entry is not None and entry[0] > now:
                        read = max(read, _tokens(segments[: j + 1]))
                        self._cache[key] = (now + entry[1], entry[1])  # a hit refreshes the lifetime
                        break
            done = read
            for i, ttl in breakpoints:  # writes happen at breakpoints only, past what was read
                tokens = _tokens(segments[: i + 1])
                if tokens <= done or tokens < self.min_cacheable_tokens:
                    continue
                written[ttl] += tokens - done
                done = tokens
                self._cache[_prefix_key(segments[: i + 1])] = (now + TTL_SECONDS[ttl], TTL_SECONDS[ttl])
        created = written["5m"] + written["1h"]
        return {
            "input_tokens": total - read - created,
            "output_tokens": max(1, _block_tokens(content)),
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": written["5m"], "ephemeral_1h_input_tokens": written["1h"]},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, payload = fake._answer(method, self.path.split("?")[0], headers, raw)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout): nothing to do

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


# --- request checks, as the real API does them ------------------------------------------------


def validate_request(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: must be a positive integer"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return "messages: first message must use the user role"
    tools = body.get("tools", [])
    names = [t.get("name") for t in tools] if isinstance(tools, list) else []
    if not isinstance(tools, list) or any(not isinstance(n, str) or not TOOL_NAME.match(n) for n in names):
        return "tools: each tool needs a name matching ^[a-zA-Z0-9_-]{1,64}$"
    if len(set(names)) != len(names):
        return "tools: tool names must be unique"
    if any(not isinstance(t.get("input_schema"), dict) or t["input_schema"].get("type") != "object" for t in tools):
        return "tools: input_schema must be a JSON schema of type object"
    for i, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant"
        if isinstance(content, list) and not content and i != len(messages) - 1:
            return f"messages.{i}: all messages must have non-empty content"
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{i}: text content blocks must be non-empty"
            if block.get("type") == "tool_use" and not isinstance(block.get("input"), dict):
                return f"messages.{i}: tool_use.input must be an object"
        problem = _check_tool_results(messages, i)
        if problem:
            return problem
    if _count_breakpoints(body) > MAX_BREAKPOINTS:
        return f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided"
    return _check_cache_controls(body)


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return content if isinstance(content, list) else []


def _check_tool_results(messages: list[dict[str, Any]], i: int) -> str | None:
    message = messages[i]
    if message.get("role") != "assistant":
        return None
    use_ids = {b.get("id") for b in _blocks(message) if b.get("type") == "tool_use"}
    if not use_ids:
        return None
    if i + 1 >= len(messages):
        return None  # a trailing assistant turn (prefill) is allowed
    result_ids = {b.get("tool_use_id") for b in _blocks(messages[i + 1]) if b.get("type") == "tool_result"}
    missing = use_ids - result_ids
    if missing:
        return (
            f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(sorted(missing))}"
        )
    unknown = result_ids - use_ids
    if unknown:
        return f"messages.{i + 1}: unexpected `tool_use_id` found in `tool_result` blocks: {', '.join(sorted(unknown))}"
    return None


def _count_breakpoints(body: dict[str, Any]) -> int:
    return sum(1 for _, marked in _walk_blocks(body) if marked)


def _check_cache_controls(body: dict[str, Any]) -> str | None:
    ttls: list[str] = []
    for _, control in _walk_blocks(body, controls=True):
        if control is None:
            continue
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            return "cache_control.type: must be 'ephemeral'"
        ttls.append(control.get("ttl", "5m"))
        if ttls[-1] not in TTL_SECONDS:
            return "cache_control.ttl: must be '5m' or '1h'"
    if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
        return "cache_control: a breakpoint with ttl '1h' must not come after one with ttl '5m'"
    return None


def _walk_blocks(body: dict[str, Any], controls: bool = False) -> list[tuple[str, Any]]:
    """Every cacheable unit in API prefix order (tools, system, messages) as (canonical text, has
    breakpoint), or with controls=True (canonical text, its cache_control or None)."""
    units: list[tuple[str, Any]] = []

    def add(role: str, block: Any) -> None:
        if isinstance(block, dict):
            control = block.get("cache_control")
            marked = "cache_control" in block
            clean = {k: v for k, v in block.items() if k != "cache_control"}
        else:
            control, marked, clean = None, False, block
        units.append((role + json.dumps(clean, sort_keys=True), control if controls else marked))

    for tool in body.get("tools") or []:
        add("tool:", tool)
    system = body.get("system")
    if isinstance(system, str):
        add("system:", {"type": "text", "text": system})
    for block in system if isinstance(system, list) else []:
        add("system:", block)
    for message in body.get("messages") or []:
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else _blocks(message)
        for block in blocks:
            add(f"{message.get('role')}:", block)
    return units


def _segments(body: dict[str, Any]) -> tuple[list[str], list[tuple[int, str]]]:
    """The units' canonical texts and the breakpoints as (unit index, ttl)."""
    units = _walk_blocks(body, controls=True)
    marks = [(i, str(control.get("ttl", "5m"))) for i, (_, control) in enumerate(units) if isinstance(control, dict)]
    return [u for u, _ in units], marks


def _tokens(segments: list[str]) -> int:
    return sum(len(s.encode("utf-8", "replace")) for s in segments) // 4


def _block_tokens(blocks: list[dict[str, Any]]) -> int:
    return len(json.dumps(blocks)) // 4


def _within_max_tokens(content: list[dict[str, Any]], max_tokens: int) -> tuple[list[dict[str, Any]], bool]:
    """The reply as the API would return it under `max_tokens`: (content, was it cut)."""
    if _block_tokens(content) <= max_tokens:
        return content, False
    kept: list[dict[str, Any]] = []
    for block in content:
        room = max_tokens - _block_tokens([*kept, block])
        if room >= 0:
            kept.append(block)
            continue
        if block.get("type") == "text":
            chars = max(0, len(block["text"]) + 4 * room)
            if chars:
                kept.append({**block, "text": block["text"][:chars]})
        elif block.get("type") == "tool_use":
            kept.append({**block, "input": {}})  # cut off while writing its input
        break
    return kept, True


def _prefix_key(segments: list[str]) -> str:
    return hashlib.sha256("\x00".join(segments).encode()).hexdigest()


def _bearer(value: str | None) -> str | None:
    return value[len("Bearer ") :] if value and value.startswith("Bearer ") else None


def _error(status: int, error_type: str, message: str) -> tuple[int, dict[str, str], bytes]:
    payload = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": f"req_fake{next(_ids):06d}",
    }
    return (
        status,
        {"content-type": "application/json", "request-id": payload["request_id"]},
        json.dumps(payload).encode(),
    )
