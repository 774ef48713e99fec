"""Case proc_other_processes: look through /proc for other processes (the host's controller, the
eval container, dockerd), read their command lines and environments, and reach files through
their /proc/<pid>/root and /proc/<pid>/cwd.

Expected: only this container's own processes are visible (a private PID namespace); nothing of
val or of the host is reachable through them; scored like the seed."""

import json
import os

import torch

from evaluator import run_context, submit

CASE = "proc_other_processes"
HOST_WORDS = ("dockerd", "containerd", "pytest", "controller", "evaluator.score", "systemd", "sshd")


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


def try_read(path, limit=4096):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError as exc:
        return f"<{exc.strerror}>"


def try_list(path):
    try:
        return sorted(os.listdir(path))[:20]
    except OSError as exc:
        return f"<{exc.strerror}>"


me = os.getpid()
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmdlines = {pid: try_read(f"/proc/{pid}/cmdline", 300) for pid in pids}
others = [pid for pid in pids if pid != me]
report(
    pids=pids,
    cmdlines=cmdlines,
    host_processes_seen=sorted({w for w in HOST_WORDS for c in cmdlines.values() if w in c}),
    other_environ={pid: try_read(f"/proc/{pid}/environ", 2000) for pid in others},
    other_root_val={pid: try_list(f"/proc/{pid}/root/data/val") for pid in others},
    other_root_listing={pid: try_list(f"/proc/{pid}/root/") for pid in others},
    other_cwd={pid: try_list(f"/proc/{pid}/cwd") for pid in others},
    other_fds={pid: try_list(f"/proc/{pid}/fd") for pid in others},
)

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
