"""The honest seed of the adversarial suites: a bigram model (one embedding table), trained for
STEPS steps on the train split, then submitted. Deterministic: the same STEPS gives the same
weights, so every case that submits this model must score exactly what the baseline scored."""

import torch

from evaluator import run_context, submit, train_batches

STEPS = 0  # optimizer steps (0 = the initial weights)
LR = 0.1  # Adam learning rate

context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
model = torch.nn.Embedding(vocab, vocab)  # logits of the next token = row of the current token
if STEPS:
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    batches = train_batches(context.data_dir, 8, context.profile.seq_len, seed=context.seed)
    for step, (x, y, _) in zip(range(STEPS), batches, strict=False):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.4f}", flush=True)
submit(model)
