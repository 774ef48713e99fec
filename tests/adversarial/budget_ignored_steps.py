"""Case budget_ignored_steps: the `test` profile's seed stops after max_steps (a convenience for
deterministic tests); report max_steps but ignore it, and train by its own clock for almost twice
the wall-clock budget. A step count is never a limit anyone relies on: only the wall clock is.

Expected: killed at the budget plus the export allowance, measured from outside; status timeout;
no score. (Training more steps than max_steps WITHIN the wall-clock budget is allowed: that budget
is the only one enforced, and the `test` profile is for tests, never for research.)"""

import time

import torch

from evaluator import run_context, submit, train_batches

context = run_context()
PROFILE = context.profile
vocab = PROFILE.vocab_size
torch.manual_seed(0)
model = torch.nn.Embedding(vocab, vocab)
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
stop_at = time.time() + 1.9 * PROFILE.time_budget_s
step = 0
for x, y, _ in train_batches(context.data_dir, 8, PROFILE.seq_len, seed=context.seed):
    if time.time() >= stop_at:
        break
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    step += 1
print(f"num_steps: {PROFILE.max_steps}", flush=True)  # what it reports; it ran {step}
submit(model)
