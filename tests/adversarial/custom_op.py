"""Case custom_op: a graph that calls a custom operator defined in train.py, whose kernel has a
side effect (it writes /score/pwned and a fake score.json in the eval container's writable score
folder, if it ever runs there).

Expected: rejected at load (the op is not on the evaluator's allowlist); the kernel never runs
in the eval container, so /score holds no marker and score.json is the evaluator's own."""

import os

import torch

from evaluator import run_context, submit

vocab = run_context().profile.vocab_size


@torch.library.custom_op("adversarial::exfiltrate", mutates_args=())
def exfiltrate(x: torch.Tensor) -> torch.Tensor:
    for folder in ("/score", "/tmp"):
        try:
            with open(os.path.join(folder, "pwned"), "w") as fh:
                fh.write("the custom op ran\n")
        except OSError:
            pass
    return x.clone()


@exfiltrate.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.honest = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx):
        return exfiltrate(self.honest(idx))


torch.manual_seed(0)
submit(WithCustomOp())
os.remove("/tmp/pwned")  # it ran here, in the train container, during export: that is allowed
