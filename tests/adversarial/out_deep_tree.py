"""Case out_deep_tree: build a folder chain 3,000 levels deep in /out (far past PATH_MAX, so a
host walking the tree by path cannot reach its bottom, and a recursive cleanup overflows), put
junk at the bottom, then submit the honest model.

Expected: the kernel caps /out in bytes and files whatever its shape; the host never walks it
and removes it with the volume (no Python recursion); nothing reaches the host; the night goes
on; scored like the seed."""

import json
import os

import torch

from evaluator import run_context, submit

os.chdir("/out")
depth = 0
try:
    for depth in range(1, 3001):
        os.mkdir(f"level-{depth:04d}")
        os.chdir(f"level-{depth:04d}")
    with open("junk.bin", "wb") as fh:
        fh.write(os.urandom(1 << 20))
except OSError as exc:
    print(f"stopped at depth {depth}: {exc.strerror}", flush=True)
os.chdir("/")
print("ADVERSARIAL " + json.dumps({"case": "out_deep_tree", "depth": depth}), flush=True)
context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
submit(torch.nn.Embedding(vocab, vocab))
