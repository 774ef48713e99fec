"""The `anthropic` agent: Claude edits train.py through a handful of tools (controller/agents/tools.py).

One proposal = one fresh conversation. The system prompt (the human's program.md plus fixed rules)
and the tool definitions never change within a tag, so they are marked for prompt caching; the
conversation so far is also marked at its newest message, so each turn reads the earlier ones
from the cache. The first user message is a compact history: the results so far, the best
train.py as a diff against the seed, the last failures, and the crash to fix when there is one.

Every API call goes through one retry policy (tenacity): rate limits (429), overload (529), other
5xx, 408/409, timeouts and connection errors are retried with exponential backoff and full jitter,
honouring retry-after headers, until `patience_s` has passed; then AgentError, and the loop waits
and goes on. The client's own retries are off (max_retries=0) so every retry is ours and counted.
Errors that waiting cannot fix (a bad key, an unknown model) raise AgentFatalError.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import anthropic
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_random_exponential

from controller.agents.base import AgentError, Proposal, ProposalContext, Usage
from controller.agents.pricing import cost_usd
from controller.agents.tools import ToolError, ToolOutcome, TrainPyTools, history_table, one_line, tool_specs

log = structlog.get_logger(__name__)

DEFAULT_MODEL = "claude-sonnet-5-5"  # the `model` setting overrides it; keep pricing.py in step
MAX_RETRY_AFTER_S = 600.0  # a retry-after beyond this is treated as this
TRANSCRIPT_STRING_CAP = 4000
HISTORY_ROWS = 60
DIFF_CAP = 20_000
LOG_TAIL_CAP = 3000
FAILURES_SHOWN = 3
EPHEMERAL = {"type": "ephemeral"}
FATAL_STATUSES = {401, 403, 404}

RULES = """\

---
# Rules of this loop (fixed)
- You work on exactly one file, train.py, through the tools view_train_py, edit_train_py and
  write_train_py. You have no shell and no other files; the history and past run logs are
  available through read_history and read_run_log.
- Each proposal is one experiment: make one coherent change (an idea, not a bundle of unrelated
  tweaks), then call finish with a one-line description of it. Nothing runs until you finish.
- The controller then commits train.py, trains it for the fixed budget in a sealed container and
  scores it. The result appears in the history of your next proposal.
- train.py must stay valid Python and must still end by calling submit(model).
- Be economical: view only the parts of train.py you need, and finish as soon as the change is made.
"""

NUDGE_NO_FINISH = (
    "You stopped without calling finish. Make your change to train.py with the tools, then call "
    "finish with a one-line description. This is the last reminder."
)
NUDGE_UNCHANGED = (
    "train.py is unchanged, so there is nothing to run. Edit train.py first, then call finish. "
    "This is the last reminder."
)


class AgentFatalError(AgentError):
    """An API error that waiting will not fix (bad key, no access, unknown model): stop and tell the user."""

    fatal = True


class AnthropicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr
    model: str = DEFAULT_MODEL
    base_url: str | None = None  # None: the client's default (or ANTHROPIC_BASE_URL)
    max_tokens: int = Field(default=16_000, ge=1)  # per model turn (adaptive thinking counts here too)
    max_turns: int = Field(default=30, ge=1)  # model calls per proposal
    request_timeout_s: float = Field(default=300.0, gt=0)  # one HTTP request
    patience_s: float = Field(default=1800.0, gt=0)  # total time one call may spend retrying
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=120.0, gt=0)


class AnthropicAgent:
    name = "anthropic"
    can_fix_crashes = True

    def __init__(self, settings: AnthropicSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self._client = anthropic.Anthropic(
            api_key=settings.api_key.get_secret_value(),
            base_url=settings.base_url,
            max_retries=0,
            timeout=settings.request_timeout_s,
        )
        self._tools = tool_specs()
        self._tools[-1] = {**self._tools[-1], "cache_control": EPHEMERAL}

    def observe(self, experiment: int, val_bpb: float | None, status: str) -> None:
        """Nothing to learn here: each proposal reads the history afresh."""

    def propose(self, context: ProposalContext) -> Proposal:
        try:
            tools = TrainPyTools(context)
        except ToolError as exc:
            raise AgentError(f"cannot read train.py: {exc}") from None
        system = system_prompt(context.program_md)
        session = _Session(messages=[_user_text(first_message(context))])
        try:
            description = self._converse(system, tools, session)
        except BaseException as exc:
            _restore(tools)
            if isinstance(exc, AgentError):
                exc.usage = self._priced(session.usage)  # type: ignore[attr-defined]
                exc.transcript = transcript(system, session.messages)  # type: ignore[attr-defined]
            raise
        usage = self._priced(session.usage)
        log.info("proposal", experiment=context.experiment, description=description, **usage.model_dump())
        return Proposal(description=description, usage=usage, transcript=transcript(system, session.messages))

    # --- the conversation --------------------------------------------------------------------

    def _converse(self, system: str, tools: TrainPyTools, session: _Session) -> str:
        nudged = False
        for _turn in range(self.settings.max_turns):
            message = self._create(system, session)
            content = list(getattr(message, "content", None) or [])
            blocks = [b for b in (_block_param(block) for block in content) if b is not None]
            if blocks:
                session.messages.append({"role": "assistant", "content": blocks})
            tool_uses = [block for block in content if getattr(block, "type", None) == "tool_use"]
            if not tool_uses:
                if nudged:
                    stop = getattr(message, "stop_reason", None)
                    raise AgentError(f"the model stopped without calling finish (stop_reason {stop})")
                nudged = True
                session.messages.append(_user_text(NUDGE_NO_FINISH))
                continue
            results: list[dict[str, Any]] = []
            finished: str | None = None
            for call in tool_uses:
                outcome = tools.run(str(getattr(call, "name", "")), getattr(call, "input", None))
                if outcome.finish_description is not None:
                    if tools.changed():
                        finished = outcome.finish_description
                    elif nudged:
                        raise AgentError("the model called finish without changing train.py, after a reminder")
                    else:
                        nudged = True
                        outcome = ToolOutcome(NUDGE_UNCHANGED, is_error=True)
                log.debug("tool_call", tool=getattr(call, "name", None), is_error=outcome.is_error)
                results.append(_tool_result(call.id, outcome))
            session.messages.append({"role": "user", "content": results})
            if finished is not None:
                return finished
        raise AgentError(f"the model did not finish within {self.settings.max_turns} turns")

    def _create(self, system: str, session: _Session) -> Any:
        request = {
            "model": self.settings.model,
            "max_tokens": self.settings.max_tokens,
            "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}],
            "tools": self._tools,
            "messages": _with_cache_breakpoint(session.messages),
        }

        def before_sleep(state: RetryCallState) -> None:
            session.usage.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning("api_retry", error=_describe(exc), wait_s=round(state.upcoming_sleep, 3), attempt=state.attempt_number)

        retrying = Retrying(
            retry=retry_if_exception(is_retryable),
            wait=self._wait,
            stop=stop_before_delay(self.settings.patience_s),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            message = retrying(self._client.messages.create, **request)
        except anthropic.APIStatusError as exc:
            if is_retryable(exc):
                raise AgentError(f"Anthropic API unavailable for {self.settings.patience_s:g}s: {_describe(exc)}") from None
            error = AgentFatalError if exc.status_code in FATAL_STATUSES else AgentError
            raise error(f"Anthropic API refused the request: {_describe(exc)}") from None
        except anthropic.APIError as exc:
            raise AgentError(f"Anthropic API unreachable for {self.settings.patience_s:g}s: {_describe(exc)}") from None
        session.usage.api_calls += 1
        _add_usage(session.usage, getattr(message, "usage", None))
        return message

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = retry_after_s(exc) if exc is not None else None
        if after is not None:
            return min(after, MAX_RETRY_AFTER_S)
        backoff = wait_random_exponential(multiplier=self.settings.backoff_initial_s, max=self.settings.backoff_max_s)
        return backoff(state)

    def _priced(self, usage: Usage) -> Usage:
        return usage.model_copy(update={"cost_usd": cost_usd(self.settings.model, usage)})


def _restore(tools: TrainPyTools) -> None:
    """Leave train.py as it was before a proposal that failed (without hiding why it failed)."""
    try:
        if tools.changed():
            tools.restore()
    except (ToolError, OSError) as exc:
        log.error("restore_train_py_failed", error=str(exc))


class _Session:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.usage = Usage()


# --- retry policy ----------------------------------------------------------------------------


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, overload, server errors, timeouts and dropped connections; not client errors."""
    if isinstance(exc, anthropic.APIStatusError):
        should = exc.response.headers.get("x-should-retry")
        if should in ("true", "false"):
            return should == "true"
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, anthropic.APIConnectionError)  # includes APITimeoutError


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, retry-after as seconds or a date)."""
    if not isinstance(exc, anthropic.APIStatusError):
        return None
    headers = exc.response.headers
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000.0)
        if (value := headers.get("retry-after")) is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        return f"HTTP {exc.status_code} {exc.type or ''} {exc.api_message or ''}".strip()
    return type(exc).__name__ if exc is not None else "unknown error"


# --- prompts ---------------------------------------------------------------------------------


def system_prompt(program_md: str) -> str:
    """program.md plus the fixed rules: identical for every experiment of a tag (so it caches)."""
    return program_md.rstrip() + "\n" + RULES


def first_message(context: ProposalContext) -> str:
    parts = [f"Experiment {context.experiment} of tag {context.tag!r} (profile {context.profile!r})."]
    table = history_table(context.history, max_rows=HISTORY_ROWS)
    parts.append("## Results so far (oldest first)\n" + (table or "none yet: the baseline has not run"))
    diff = context.best_diff.strip()
    if len(diff) > DIFF_CAP:
        diff = diff[:DIFF_CAP] + "\n[... diff cut]"
    parts.append("## The current best train.py against the seed\n" + (f"```diff\n{diff}\n```" if diff else "identical to the seed"))
    failures = [f for f in context.failures[-FAILURES_SHOWN:] if context.fix_attempt is None or f.n != context.fix_attempt.n]
    if failures:
        lines = ["## Recent failures"]
        for f in failures:
            lines.append(f"- experiment {f.n} ({f.status}): {one_line(f.description)}\n```\n{_tail(f.log_tail)}\n```")
        parts.append("\n".join(lines))
    if context.fix_attempt is not None:
        fix = context.fix_attempt
        parts.append(
            f"## Fix request\nExperiment {fix.n} ({one_line(fix.description)}) ended with status {fix.status!r}. "
            f"train.py is that experiment's version. The log ends with:\n```\n{_tail(fix.log_tail)}\n```\n"
            "If the failure is trivial (a typo, a shape, an import), fix it with the smallest change and call "
            "finish with the same idea's description plus what you fixed. If the idea itself is broken, "
            "say so in a short message without calling finish."
        )
    else:
        parts.append(
            "## Your task\ntrain.py is the current best. Propose the next experiment: change train.py with the "
            "tools, then call finish with a one-line description."
        )
    return "\n\n".join(parts)


def _tail(text: str) -> str:
    return text if len(text) <= LOG_TAIL_CAP else "[...]\n" + text[-LOG_TAIL_CAP:]


# --- messages --------------------------------------------------------------------------------


def _user_text(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _tool_result(tool_use_id: str, outcome: ToolOutcome) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": outcome.text, "is_error": outcome.is_error}


def _block_param(block: Any) -> dict[str, Any] | None:
    """A response content block as it must be sent back in the next request."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text} if block.text.strip() else None
    if kind == "tool_use":
        payload = block.input if isinstance(block.input, dict) else {}
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": payload}
    if kind in ("thinking", "redacted_thinking"):
        return block.model_dump(mode="json", exclude_none=True)
    return None


def _with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with a cache breakpoint on the last block of the newest one (copies, not edits)."""
    if not messages:
        return messages
    last = messages[-1]
    content = [dict(block) for block in last["content"]]
    content[-1]["cache_control"] = EPHEMERAL
    return [*messages[:-1], {**last, "content": content}]


def _add_usage(total: Usage, usage: Any) -> None:
    if usage is None:
        return
    total.input_tokens += getattr(usage, "input_tokens", None) or 0
    total.output_tokens += getattr(usage, "output_tokens", None) or 0
    total.cache_creation_input_tokens += getattr(usage, "cache_creation_input_tokens", None) or 0
    total.cache_read_input_tokens += getattr(usage, "cache_read_input_tokens", None) or 0


def transcript(system: str, messages: list[dict[str, Any]]) -> list[dict]:
    """The conversation as JSON-able dicts, long strings cut, for the run folder."""
    return [_truncated({"role": "system", "content": system}), *(_truncated(m) for m in messages)]


def _truncated(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) <= TRANSCRIPT_STRING_CAP:
            return value
        return value[:TRANSCRIPT_STRING_CAP] + f"[... {len(value) - TRANSCRIPT_STRING_CAP} chars cut]"
    if isinstance(value, dict):
        return {str(k): _truncated(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_truncated(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return repr(value)
