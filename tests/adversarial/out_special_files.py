"""Case out_special_files: leave every kind of hostile entry in /out: a FIFO, a device node (an
attempt: mknod needs a capability the container lacks), a symlink to /etc/shadow, file names with
terminal escape codes and a newline, and a folder with mode 000; then submit the honest model.

Expected: none of it reaches the host (the volume is removed with the run; the host copies only
model.pt2, as a regular file); scored like the seed."""

import json
import os
import stat

import torch

from evaluator import run_context, submit


def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.strerror


facts = {
    "fifo": attempt(lambda: os.mkfifo("/out/fifo")),
    "char_device": attempt(lambda: os.mknod("/out/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))),
    "symlink": attempt(lambda: os.symlink("/etc/shadow", "/out/shadow")),
    "odd_name": attempt(lambda: open("/out/\x1b[31mkeep\x1b[0m\nforged", "w").write("x")),
    "locked_folder": attempt(
        lambda: (os.mkdir("/out/locked"), open("/out/locked/f", "w").write("x"), os.chmod("/out/locked", 0))
    ),
}
print("ADVERSARIAL " + json.dumps({"case": "out_special_files", **facts}), flush=True)
context = run_context()
vocab = context.profile.vocab_size
torch.manual_seed(0)
submit(torch.nn.Embedding(vocab, vocab))
