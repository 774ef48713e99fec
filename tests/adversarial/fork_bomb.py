"""Case fork_bomb: every process forks as fast as it can, forever (when a fork is refused it waits
a little and tries again), before any model exists.

Expected: the container's pids limit stops the growth (the host keeps working); the run ends at
its hard cap (timeout) or by its memory limit (crash); every process is gone with the container."""

import os
import time

print("forking without bound", flush=True)
forked = refused = 0
while True:
    try:
        if os.fork() == 0:
            forked = refused = 0
            continue
        forked += 1
    except OSError:
        refused += 1
        if refused == 1:
            print(f"pid {os.getpid()}: fork refused after {forked} children", flush=True)
        time.sleep(0.05)
