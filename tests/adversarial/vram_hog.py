"""Case vram_hog: allocate GPU memory without bound. On a GPU host this is
`torch.empty(..., device="cuda")` in a loop; here, with no GPU, the script writes the bytes it
would hold to /out/.vram_bytes, and the test's fake NVML reports them as the GPU's used memory,
so the real watchdog judges the run exactly as it would judge real allocations.

Expected: the NVML watchdog kills the run once its VRAM passes the cap: status crash with the
VRAM reason; the container removed."""

import os
import time

import torch

held = []
total = 0
while True:
    if torch.cuda.is_available():
        held.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
    total += 256 << 20
    with open("/out/.vram_bytes.tmp", "w") as fh:
        fh.write(str(total))
    os.replace("/out/.vram_bytes.tmp", "/out/.vram_bytes")
    print(f"holding {total >> 20} MiB of VRAM", flush=True)
    time.sleep(0.1)
