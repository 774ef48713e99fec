"""Case mix_rows: a model that reads the other rows of its batch (the batch mean of a one-hot of
the next tokens leaks across rows, and row i also sees row i+1's tokens).

Expected: rejected by the causality probe (rows must be independent, or future tokens change
earlier predictions); no val_bpb recorded."""

import torch
import torch.nn.functional as F

from evaluator import run_context, submit

vocab = run_context().profile.vocab_size


class MixRows(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.honest = torch.nn.Embedding(vocab, vocab)
        self.register_buffer("onehot", torch.eye(vocab) * 5.0)

    def forward(self, idx):
        neighbour = torch.roll(idx, shifts=1, dims=0)  # the next row of the batch
        batch_mean = F.embedding(idx, self.onehot).mean(dim=0, keepdim=True)
        return self.honest(idx) + F.embedding(neighbour, self.onehot) + batch_mean


torch.manual_seed(0)
submit(MixRows())
