"""Case log_flood: flood stdout and stderr (tens of MB, long lines without newlines, terminal
escape sequences), then submit an honest model.

Expected: train.log stops at its size cap with a truncation marker, the host keeps draining the
container's output; the run is scored like the seed."""

import os
import sys

import torch

from evaluator import run_context, submit

line = ("\x1b[2J\x1b[31mflood " + "x" * 1000 + "\n").encode()
chunk = line * 256  # ~256 KB
for i in range(120):  # ~30 MB
    os.write(1, chunk)
    if i % 10 == 0:
        os.write(2, b"y" * 200_000)  # a long line without a newline, on stderr
print("\nflood done", flush=True)
sys.stdout.flush()

vocab = run_context().profile.vocab_size
torch.manual_seed(0)
submit(torch.nn.Embedding(vocab, vocab))
