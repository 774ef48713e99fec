"""Case train_past_budget: ignore the profile's budget and train forever (a longer run would give
a better model), printing progress.

Expected: killed at the hard wall-clock cap measured from outside the container; status timeout;
no model scored; the container removed."""

import time

import torch

from evaluator import run_context, train_batches

context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
model = torch.nn.Embedding(vocab, vocab)
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
started = time.monotonic()
budget = context.profile.time_budget_s
for step, (x, y, _) in enumerate(train_batches(context.data_dir, 8, context.profile.seq_len)):
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        elapsed = time.monotonic() - started
        print(f"step {step} loss {loss.item():.3f} at {elapsed:.1f}s of a {budget:.0f}s budget", flush=True)
