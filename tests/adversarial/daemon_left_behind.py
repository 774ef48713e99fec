"""Case daemon_left_behind: double-fork a daemon in its own session that ignores SIGTERM and
SIGHUP (its command line carries a marker the test looks for on the host), then submit an honest
model and exit. The daemon waits until train.py has exited and a little more (until the host
copies the artifact and the eval runs), then swaps /out/model.pt2 for garbage and writes a marker.

Expected: when train.py exits the container ends and every process in it is killed: the daemon
never wakes (no process with its marker on the host, no marker file), the artifact scored is the
honest one (scored like the seed), no container left."""

import os
import sys

import torch

from evaluator import run_context, submit

MARKER = "adversarial-daemon-left-behind"
DAEMON = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
main = int(sys.argv[1])
while os.path.exists(f"/proc/{main}"):
    time.sleep(0.05)
time.sleep(0.5)
with open("/out/daemon-was-here", "w") as fh:
    fh.write(f"pid {os.getpid()} still alive after train.py exited\n")
with open("/out/model.pt2.swap", "wb") as fh:
    fh.write(os.urandom(4096))
os.replace("/out/model.pt2.swap", "/out/model.pt2")
time.sleep(10**6)
"""

main = os.getpid()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", DAEMON, str(main), MARKER])
    os._exit(0)
os.wait()
print("daemon started", flush=True)

vocab = run_context().profile.vocab_size
torch.manual_seed(0)
submit(torch.nn.Embedding(vocab, vocab))
