"""Tokens per proposal of the `anthropic` agent over a scripted night against the fake Messages API.

    python benchmarks/bench_agent_tokens.py [--experiments 12] [--gap-s 360] [--json out.json]

The real loop (controller/loop.py, real git, real ledger) drives the real agent and the real
`anthropic` client against the fake Messages API on loopback (tests/fake_anthropic.py), which
simulates prompt caching with lifetimes on a clock this script moves on: each experiment "trains"
for --gap-s seconds of that clock (360 s by default: the `gpu` profile's 330 s budget plus the
scoring), with a fake runner that scores train.py from its constants. The seed is the
real programs/default/{train.py,program.md}. Token counts are the fake's estimate (bytes / 4).

The scripted model does the same in every proposal: it views the constants block, asks for the
history summary, searches the history for the constant it will change and reads the previous
experiment's diff; then it edits one constant and writes the result into its notebook; then it
finishes. (Against a version without those tools, they simply come back as errors.)

Prints one line per proposal (API calls; uncached input, cache read, cache write and output
tokens; the cache-hit fraction = read / all input) and the means, and what a night of 100
experiments would cost at Claude Sonnet 5.5's prices. Output tokens here are only the scripted
tool calls: a real model adds its reasoning, so treat the output column as a floor.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.agents.anthropic_agent import AnthropicAgent, AnthropicSettings  # noqa: E402
from controller.logs import configure_quiet  # noqa: E402
from controller.loop import LoopDeps, NightLoop  # noqa: E402
from controller.settings import load_settings  # noqa: E402
from evaluator.records import ScoreRecord  # noqa: E402
from sandbox.result import ExperimentResult, ExperimentSpec  # noqa: E402
from tests.controller_fakes import constants, git, make_data_dir  # noqa: E402
from tests.fake_anthropic import FakeAnthropic, Reply, _tokens, _walk_blocks, text, tool_use  # noqa: E402

API_KEY = "bench-key"
MODEL = "claude-sonnet-5-5"
# USD per million tokens for Claude Sonnet 5.5 (controller/agents/pricing.py, from the published
# pricing): input, output, 5-minute cache write, 1-hour cache write, cache read.
PRICE = {"input": 2.0, "output": 10.0, "write_5m": 2.50, "write_1h": 4.0, "read": 0.20}
# The constant each proposal changes, cycled; the new value is the current one times FACTORS[cycle].
PLAN = [
    "MATRIX_LR",
    "WARMDOWN_FRAC",
    "EMBED_LR",
    "HEAD_LR",
    "WEIGHT_DECAY",
    "WARMUP_FRAC",
    "SCALAR_LR",
    "MUON_MOMENTUM",
    "FINAL_LR_FRAC",
    "LOGIT_SOFTCAP",
    "ROPE_BASE",
]
FACTORS = [1.5, 0.8, 1.25, 0.6, 1.1, 0.9]
OPTIMUM = {
    "MATRIX_LR": 0.03,
    "WARMDOWN_FRAC": 0.5,
    "EMBED_LR": 0.3,
    "HEAD_LR": 0.006,
    "WEIGHT_DECAY": 0.01,
    "WARMUP_FRAC": 0.0,
    "SCALAR_LR": 0.02,
    "MUON_MOMENTUM": 0.95,
    "FINAL_LR_FRAC": 0.0,
    "LOGIT_SOFTCAP": 15.0,
    "ROPE_BASE": 10000.0,
}


class Clock:
    """The fake's (and the agent's) clock: experiments move it on, nobody sleeps."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.t

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


def score(source: str) -> float:
    """Lower is better: relative distance of each planned constant from its optimum."""
    c = constants(source)
    return 1.0 + sum(abs(c.get(k, v) - v) / max(abs(v), 1e-3) / 50 for k, v in OPTIMUM.items())


class BenchRunner:
    def __init__(self, clock: Clock, gap_s: float) -> None:
        self.clock, self.gap_s = clock, gap_s

    def __call__(self, spec: ExperimentSpec) -> ExperimentResult:
        run_dir = Path(spec.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if Path(spec.train_py).resolve() != (run_dir / "train.py").resolve():
            shutil.copyfile(spec.train_py, run_dir / "train.py")
        source = (run_dir / "train.py").read_text()
        (run_dir / "train.log").write_text("step 0 loss 9.0\nstep 100 loss 4.2\ndone\n")
        (run_dir / "eval.log").write_text("scored\n")
        result = ScoreRecord(status="ok", profile=spec.profile, val_bpb=score(source), tokens=100, bytes=400)
        (run_dir / "score.json").write_text(result.model_dump_json())
        self.clock.advance(self.gap_s)
        return ExperimentResult(
            run_dir=run_dir,
            status="ok",
            score=result,
            train_seconds=330.0,
            eval_seconds=30.0,
            peak_memory_gb=40.0,
            train_exit_code=0,
            eval_exit_code=0,
            image_id="sha256:bench",
        )


def constants_lines(seed: str) -> tuple[int, int]:
    """The first and last line (1-based) of the seed's constants that the plan changes."""
    lines = [i for i, line in enumerate(seed.splitlines(), 1) if line.split(" = ")[0] in PLAN]
    return lines[0], lines[-1]


class ScriptedModel:
    """Answers each request from what it was sent (see the module doc)."""

    def __init__(self, seed: str) -> None:
        self.tool_calls: dict[str, int] = {}
        self.tried: dict[int, str] = {}
        self.view = constants_lines(seed)

    def __call__(self, body: dict[str, Any]) -> Reply:
        messages = body["messages"]
        turn = sum(1 for m in messages if m["role"] == "assistant")
        opening = messages[0]["content"][0]["text"]
        k = int(re.search(r"Experiment (\d+)", opening).group(1))  # type: ignore[union-attr]
        name = PLAN[(k - 1) % len(PLAN)]
        if turn == 0:
            calls = [
                tool_use("view_train_py", {"start_line": self.view[0], "end_line": self.view[1]}),
                tool_use("history_summary", {}),
                tool_use("search_history", {"constant": name}),
            ]
            if k > 1:
                calls.append(tool_use("show_experiment", {"run": k - 1}))
            return self._say(f"Experiment {k}: I will look at {name} next.", calls)
        if turn == 1:
            results = " ".join(
                str(b.get("content", "")) for b in messages[-1]["content"] if b.get("type") == "tool_result"
            )
            current = re.search(rf"\| {name} = ([^\s#]+)", results)
            old = current.group(1) if current else "?"
            new = next_value(old, (k - 1) // len(PLAN))
            self.tried[k] = f"{name} {old} -> {new}"
            calls = [
                tool_use("edit_train_py", {"old_str": f"{name} = {old}", "new_str": f"{name} = {new}"}),
                tool_use(
                    "update_notebook",
                    {
                        "section": "Tried",
                        "mode": "append",
                        "text": f"- #{k}: {name} {old} -> {new} (result in the next table)",
                    },
                ),
                tool_use(
                    "update_notebook",
                    {"section": "Next", "mode": "replace", "text": f"- after {name}: try {PLAN[k % len(PLAN)]}"},
                ),
            ]
            return self._say(f"{name} is {old}; trying {new}.", calls)
        return self._say("Done.", [tool_use("finish", {"description": self.tried.get(k, name)})])

    def _say(self, words: str, calls: list[dict[str, Any]]) -> Reply:
        for c in calls:
            self.tool_calls[c["name"]] = self.tool_calls.get(c["name"], 0) + 1
        return Reply([text(words), *calls])


def next_value(old: str, cycle: int) -> str:
    try:
        value = float(old)
    except ValueError:
        return "0.5"
    new = 0.01 * (cycle + 1) if value == 0 else value * FACTORS[cycle % len(FACTORS)]
    return repr(round(new, 6))


def stuck_guard() -> Any:
    """The loop's sleep: a scripted night never waits, and one that keeps failing is a bug here."""
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 50:
            raise RuntimeError("the scripted night is stuck: the agent keeps failing")

    return sleep


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "programs" / "default").mkdir(parents=True)
    for name in ("train.py", "program.md"):
        shutil.copyfile(REPO / "programs" / "default" / name, root / "programs" / "default" / name)
    (root / ".gitignore").write_text("runs/\nworktrees/\ndata/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "seed")
    return root


def make_agent(url: str, clock: Clock) -> AnthropicAgent:
    settings = AnthropicSettings(api_key=API_KEY, base_url=url, model=MODEL, backoff_initial_s=0.01, backoff_max_s=0.05)
    if "clock" in inspect.signature(AnthropicAgent).parameters:  # (older versions of the agent have none)
        return AnthropicAgent(settings, sleep=lambda s: None, clock=clock)
    return AnthropicAgent(settings, sleep=lambda s: None)


def run_night(workdir: Path, experiments: int, gap_s: float) -> dict[str, Any]:
    """One scripted night; returns per-proposal usage (from each run.json) and what the model called."""
    repo = make_repo(workdir / "repo")
    clock = Clock()
    model = ScriptedModel((repo / "programs" / "default" / "train.py").read_text())
    settings = load_settings(
        tag="bench",
        profile="gpu",
        agent="anthropic",
        repo=repo,
        runs_dir=repo / "runs",
        worktrees_dir=repo / "worktrees",
        data_dir=repo / "data",
        max_experiments=experiments,
        overlap=False,
    )  # one proposal per experiment, in order, on the simulated clock
    with FakeAnthropic(api_key=API_KEY, responder=model, clock=clock) as fake:
        deps = LoopDeps(
            agent=make_agent(fake.url, clock),
            runner=BenchRunner(clock, gap_s),
            sleep=stuck_guard(),
            manifest_sha256=make_data_dir(Path(settings.data_dir)),
        )
        summary = NightLoop(settings, deps).run()
        first = fake.message_requests()[0].body
    prefix = [unit for unit, _ in _walk_blocks(first) if unit.startswith(("tool:", "system:"))]
    tag_dir = repo / "runs" / "bench"
    rows = []
    for run in sorted(p for p in tag_dir.iterdir() if (p / "run.json").is_file() and p.name[:4].isdigit()):
        record = json.loads((run / "run.json").read_text())
        if record["n"] > 0:
            rows.append({"n": record["n"], "status": record["status"], **record["usage"]})
    notebook = tag_dir / "notebook.md"
    return {
        "rows": rows,
        "tool_calls": model.tool_calls,
        "kept": sum(r.status == "keep" for r in summary.rows) - 1,
        "notebook_bytes": notebook.stat().st_size if notebook.exists() else 0,
        "prefix_tokens": _tokens(prefix),
    }


def cost(u: dict[str, Any]) -> float:
    write_1h = u.get("cache_creation_1h_input_tokens", 0)
    return (
        u["input_tokens"] * PRICE["input"]
        + u["output_tokens"] * PRICE["output"]
        + (u["cache_creation_input_tokens"] - write_1h) * PRICE["write_5m"]
        + write_1h * PRICE["write_1h"]
        + u["cache_read_input_tokens"] * PRICE["read"]
    ) / 1e6


def hit_fraction(u: dict[str, Any]) -> float:
    total = u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
    return u["cache_read_input_tokens"] / total if total else 0.0


def report(night: dict[str, Any]) -> list[str]:
    out = ["  n status  calls   input  c.read c.write (1h)  output  hit    cost$"]
    for u in night["rows"]:
        out.append(
            f"{u['n']:>3} {u['status']:<7} {u['api_calls']:>5} {u['input_tokens']:>7} "
            f"{u['cache_read_input_tokens']:>7} {u['cache_creation_input_tokens']:>7} "
            f"({u.get('cache_creation_1h_input_tokens', 0):>5}) {u['output_tokens']:>7} "
            f"{hit_fraction(u):5.1%} {cost(u):8.4f}"
        )
    rows = night["rows"]
    mean = {
        k: statistics.mean(u.get(k, 0) for u in rows)
        for k in (
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "output_tokens",
            "api_calls",
        )
    }
    total_in = mean["input_tokens"] + mean["cache_read_input_tokens"] + mean["cache_creation_input_tokens"]
    per = statistics.mean(cost(u) for u in rows)
    out += [
        f"stable prefix (tools + system): {night['prefix_tokens']} tokens",
        f"proposals: {len(rows)}, kept: {night['kept']}, notebook: {night['notebook_bytes']} bytes, "
        f"tool calls: {json.dumps(night['tool_calls'], sort_keys=True)}",
        f"mean per proposal: api_calls {mean['api_calls']:.1f}, input {mean['input_tokens']:.0f}, "
        f"cache_read {mean['cache_read_input_tokens']:.0f}, cache_write {mean['cache_creation_input_tokens']:.0f}, "
        f"output {mean['output_tokens']:.0f}",
        f"cache_hit_fraction: {sum(u['cache_read_input_tokens'] for u in rows) / sum(_all_input(u) for u in rows):.3f}",
        f"cost_per_proposal_usd: {per:.4f} ({MODEL})",
        f"per_100_experiments: input tokens {100 * total_in / 1e6:.2f}M (of which cache reads "
        f"{100 * mean['cache_read_input_tokens'] / 1e6:.2f}M), output tokens {100 * mean['output_tokens'] / 1e6:.3f}M, "
        f"${100 * per:.2f}",
    ]
    return out


def _all_input(u: dict) -> int:
    return u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=12)
    parser.add_argument("--gap-s", type=float, default=360.0, help="clock seconds one experiment takes")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-proposal figures here")
    args = parser.parse_args(argv)
    configure_quiet()  # the controller's structured log is not what this prints
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        night = run_night(Path(tmp), args.experiments, args.gap_s)
    print(f"bench_agent_tokens: {args.experiments} experiments, {args.gap_s:g} s apart, model {MODEL}")
    for line in report(night):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(night, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
