"""Case disk_fill: fill the disk through /out (the one folder the train container may write),
as fast as it can, in many files.

Expected: writes fail when /out reaches its cap (a tmpfs the kernel caps, not a walk of the tree):
the script ends without a model (status crash); what it wrote never reaches the host; other
runs unaffected."""

import os

block = os.urandom(4 << 20)
written = 0
n = 0
print("filling /out", flush=True)
while True:
    try:
        with open(f"/out/fill-{n:05d}.bin", "wb") as fh:
            for _ in range(16):
                fh.write(block)
                written += len(block)
    except OSError as exc:
        print(f"write failed after {written >> 20} MiB: {exc.strerror}", flush=True)
        break
    n += 1
