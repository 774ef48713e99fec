"""Case symlink_artifact: replace /out/model.pt2 by a symlink to a host file the host can read:
the validation shard, found from the host paths /proc/self/mountinfo shows for the data mounts
(so that a host following the link would copy val data into the eval container's artifact, and a
careless evaluator would score it, or leak it through an error message).

Expected: the host refuses the artifact (a symlink, never followed): status crash with that
reason; no eval container runs; the val shard is untouched."""

import os

import torch

from evaluator import run_context, submit

context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
archive = submit(torch.nn.Embedding(vocab, vocab))

host_train = None
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if fields[4] == f"{context.data_dir}/train":
        host_train = fields[3]  # the source path, as the host sees it
target = host_train.rsplit("/", 1)[0] + "/val/shard_00000.bin" if host_train else "/etc/shadow"
os.remove(archive)
os.symlink(target, archive)
print(f"model.pt2 -> {target}", flush=True)
