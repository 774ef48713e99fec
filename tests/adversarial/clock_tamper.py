"""Case clock_tamper: set the system clock back, and when that fails, freeze every clock Python
offers in this process (time.time, monotonic, perf_counter, their _ns forms), then train "within
budget" forever by its own clock.

Expected: setting the clock is refused (no CAP_SYS_TIME); the frozen clocks change nothing:
killed at the hard cap measured from outside; status timeout."""

import json
import time

import torch

from evaluator import run_context, train_batches


def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


results = {
    "clock_settime": attempt(lambda: time.clock_settime(time.CLOCK_REALTIME, 0.0)),
    "clock_settime_monotonic": attempt(lambda: time.clock_settime(time.CLOCK_MONOTONIC, 0.0)),
}
frozen = time.time()
for name in ("time", "monotonic", "perf_counter"):
    setattr(time, name, lambda: frozen)
    setattr(time, name + "_ns", lambda: int(frozen * 1e9))
print("ADVERSARIAL " + json.dumps({"case": "clock_tamper", **results}), flush=True)

context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
model = torch.nn.Embedding(vocab, vocab)
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
started = time.monotonic()
for step, (x, y, _) in enumerate(train_batches(context.data_dir, 8, context.profile.seq_len)):
    if time.monotonic() - started > context.profile.time_budget_s:
        break  # never: the clock is frozen
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step}: 0.0s elapsed by my clock", flush=True)
