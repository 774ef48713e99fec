"""Case out_setuid_file: leave a setuid+setgid copy of a shell owned by the container user in
/out (on a host that kept /out, it would run as that user from any other account), then submit
the honest model.

Expected: /out is a volume mounted nosuid, nodev, noexec and removed with the run: no setuid file
reaches the host; the run folder holds only the artifact and the capped logs; scored like the seed."""

import json
import os
import shutil
import stat

import torch

from evaluator import run_context, submit

context = run_context()
target = "/out/sh-setuid"
facts = {}
try:
    shutil.copyfile("/bin/bash", target)
    os.chmod(target, 0o6755)
    mode = os.stat(target).st_mode
    facts["setuid_written"] = bool(mode & stat.S_ISUID and mode & stat.S_ISGID)
except OSError as exc:
    facts["setuid_written"] = exc.strerror
try:
    facts["exec_from_out"] = os.system(target + " -c true") == 0
except OSError as exc:
    facts["exec_from_out"] = exc.strerror
print("ADVERSARIAL " + json.dumps({"case": "out_setuid_file", **facts}), flush=True)
vocab = context.profile.vocab_size
torch.manual_seed(0)
submit(torch.nn.Embedding(vocab, vocab))
