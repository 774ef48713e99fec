"""Case budget_untimed_warmup: raise the number of "untimed" warm-up steps (steps whose time the
script does not count against its budget, as compile warm-up steps once were), so it trains
through many steps before its own clock starts, then for the whole budget after.

Expected: the budget is wall clock from the container's start, measured by the host: killed at
the budget plus the export allowance; status timeout; no score."""

import time

import torch

from evaluator import run_context, submit, train_batches

WARMUP_STEPS_UNTIMED = 100_000  # was 2 ("the first steps compile")

context = run_context()
PROFILE = context.profile
vocab = PROFILE.vocab_size
torch.manual_seed(0)
model = torch.nn.Embedding(vocab, vocab)
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
counted = 0.0
for step, (x, y, _) in enumerate(train_batches(context.data_dir, 8, PROFILE.seq_len, seed=context.seed)):
    t0 = time.time()
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step >= WARMUP_STEPS_UNTIMED:
        counted += time.time() - t0
    if counted >= PROFILE.time_budget_s:
        break
    if step % 500 == 0:
        print(f"step {step}: {counted:.1f}s counted", flush=True)
submit(model)
