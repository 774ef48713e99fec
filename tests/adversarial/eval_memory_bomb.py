"""Case eval_memory_bomb: submit an honest model, then edit the graph in the archive so that a
constant made inside forward (`torch.ones(1)`) becomes 2**29 elements (2 GiB) on every call: a
graph that passes the op allowlist but tries to exhaust the machine that scores it.

Expected: the eval container is stopped by its memory limit: status crash with that reason; the
host and the next runs are unaffected."""

import json
import os
import zipfile

import torch

from evaluator import run_context, submit

vocab = run_context().profile.vocab_size


class WithConstant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.honest = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx):
        return self.honest(idx) + torch.ones(1).sum() * 0.0


torch.manual_seed(0)
archive = submit(WithConstant())
with zipfile.ZipFile(archive) as zf:
    members = {info.filename: zf.read(info) for info in zf.infolist()}
name = next(n for n in members if n.endswith("/models/model.json"))
graph = json.loads(members[name])
for node in graph["graph_module"]["graph"]["nodes"]:
    if node["target"] == "torch.ops.aten.ones.default":
        node["inputs"][0]["arg"]["as_ints"] = [2**29]
members[name] = json.dumps(graph).encode()
with zipfile.ZipFile(f"{archive}.tmp", "w", zipfile.ZIP_STORED) as zf:
    for member, data in members.items():
        zf.writestr(member, data)
os.replace(f"{archive}.tmp", archive)
print("graph edited: 2 GiB made on every call", flush=True)
