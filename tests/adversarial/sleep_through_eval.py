"""Case sleep_through_eval: submit a model, then stay alive (sleeping, and a helper process that
keeps rewriting /out/model.pt2) hoping to outlast the eval, or to change the artifact while it is
being scored.

Expected: the train container is killed at its hard cap; status timeout; the eval container never
starts, so nothing is scored while agent code still runs."""

import os
import time

import torch

from evaluator import run_context, submit

context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
archive = submit(torch.nn.Embedding(vocab, vocab))
if os.fork() == 0:
    while True:  # a second process that keeps swapping the artifact
        try:
            with open(f"{archive}.swap", "wb") as fh:
                fh.write(os.urandom(4096))
            os.replace(f"{archive}.swap", archive)
        except OSError:
            pass
        time.sleep(0.2)
print("submitted; now sleeping through the eval", flush=True)
time.sleep(10**6)
