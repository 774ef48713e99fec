"""Case leftover_check: look for anything an earlier run left behind: the markers write_everywhere
wrote in /tmp, the home folder, /dev/shm and /out, the shadowing files monkeypatch_evaluator
planted, the fake score files, and processes of earlier runs (daemon_left_behind's daemon).

Expected: nothing at all (every run gets fresh containers, tmpfs and out folder); scored like the
seed."""

import json
import os

import torch

from evaluator import run_context, submit

CASE = "leftover_check"


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


home = os.path.expanduser("~")
places = ["/tmp", home, "/dev/shm", "/out"]
listing = {p: sorted(os.listdir(p)) for p in places if os.path.isdir(p)}
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmdlines = {pid: open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode() for pid in pids}
report(listing=listing, processes=cmdlines)

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
