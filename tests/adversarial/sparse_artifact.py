"""Case sparse_artifact: submit a model.pt2 that is a 1 TiB sparse file (4 KiB on disk): a host
that copies it byte by byte fills its disk (once, 4 KB became 3.1 GB on the host).

Expected: the host counts the apparent size and refuses it before copying anything: status
crash with that reason; no eval container runs; nothing large on the host."""

import os

import torch

from evaluator import run_context, submit

context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
archive = submit(torch.nn.Embedding(vocab, vocab))
with open(archive, "r+b") as fh:
    fh.truncate(1 << 40)
print(f"model.pt2 is now {os.stat(archive).st_size} bytes, {os.stat(archive).st_blocks * 512} on disk", flush=True)
