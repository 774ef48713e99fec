"""Case out_junk_under_cap: write junk into /out up to just under its cap (so no limit fires),
then submit the honest model: every run could leave that much on the host's disk.

Expected: nothing but the artifact and the logs stays on the host; scored like the seed."""

import json
import os

import torch

from evaluator import run_context, submit

free = os.statvfs("/out").f_bavail * os.statvfs("/out").f_frsize
target = max(0, free - (8 << 20))  # all of /out but room for the model
block = b"j" * (1 << 20)
written = 0
with open("/out/junk.bin", "wb") as fh:
    while written + len(block) <= target:
        fh.write(block)
        written += len(block)
print(
    "ADVERSARIAL " + json.dumps({"case": "out_junk_under_cap", "junk_bytes": written, "free_before": free}), flush=True
)
context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
submit(torch.nn.Embedding(vocab, vocab))
