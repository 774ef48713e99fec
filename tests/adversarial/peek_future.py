"""Case peek_future: a model whose prediction at position t is the token at t+1 (read from its
own input, shifted): a perfect score if the evaluator only computed the cross-entropy.

Expected: rejected by the causality probe ("looks at future tokens"); no val_bpb recorded."""

import torch
import torch.nn.functional as F

from evaluator import run_context, submit

vocab = run_context().profile.vocab_size


class PeekFuture(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.honest = torch.nn.Embedding(vocab, vocab)
        self.register_buffer("cheat", torch.eye(vocab) * 30.0)

    def forward(self, idx):
        following = torch.roll(idx, shifts=-1, dims=1)  # the token each position must predict
        return self.honest(idx) + F.embedding(following, self.cheat)


torch.manual_seed(0)
print("val_bpb: 0.000100 (the model knows the answers)", flush=True)
submit(PeekFuture())
