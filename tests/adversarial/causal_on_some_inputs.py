"""Case causal_on_some_inputs: a model that is causal almost everywhere and peeks at the next
token only after one particular token (the most frequent one in the train split), so most
positions of most inputs look honest.

Expected: rejected by the causality probe, which cuts every row of several real eval batches at
random positions; no val_bpb recorded."""

import numpy as np
import torch
import torch.nn.functional as F

from evaluator import run_context, submit
from evaluator.dataloader import load_split

context = run_context()
vocab = context.profile.vocab_size
TRIGGER = int(np.bincount(load_split(context.data_dir, "train"), minlength=vocab).argmax())


class SometimesPeeks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.honest = torch.nn.Embedding(vocab, vocab)
        self.register_buffer("cheat", torch.eye(vocab) * 30.0)

    def forward(self, idx):
        following = torch.roll(idx, shifts=-1, dims=1)
        leak = F.embedding(following, self.cheat)
        return self.honest(idx) + torch.where((idx == TRIGGER).unsqueeze(-1), leak, torch.zeros_like(leak))


torch.manual_seed(0)
print(f"peeking only after token {TRIGGER}", flush=True)
submit(SometimesPeeks())
