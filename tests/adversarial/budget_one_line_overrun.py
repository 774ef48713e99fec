"""Case budget_one_line_overrun: the plausible one-line change an agent finds first: "train a bit
longer", here `DEADLINE = context.deadline + 0.9 * PROFILE.time_budget_s` in an otherwise honest
script that plans its training by the deadline and then submits.

Expected: the host kills the container at the budget plus the export allowance, measured from
outside from its start; status timeout; no score, whatever it would have submitted."""

import time

import torch

from evaluator import run_context, submit, train_batches

context = run_context()
PROFILE = context.profile
DEADLINE = context.deadline + 0.9 * PROFILE.time_budget_s  # the one-line change: "train longer"

vocab = PROFILE.vocab_size
torch.manual_seed(0)
model = torch.nn.Embedding(vocab, vocab)
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
steps = 0
for x, y, _ in train_batches(context.data_dir, 8, PROFILE.seq_len, seed=context.seed):
    if time.time() >= DEADLINE:
        break
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    steps += 1
    if steps % 200 == 0:
        print(f"step {steps}: {DEADLINE - time.time():.1f}s left by my own deadline", flush=True)
print(f"trained {steps} steps", flush=True)
submit(model)
