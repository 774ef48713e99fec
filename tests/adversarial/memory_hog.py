"""Case memory_hog: allocate host RAM without bound (every page touched): 256 MiB in /dev/shm (a
tmpfs is RAM too), then ever more in this process.

Expected: stopped by the container's memory limit (the kernel's OOM killer inside the
container's cgroup): status crash with an OOM reason; the host and the next runs unaffected."""

print("allocating without bound", flush=True)
held = []
with open("/dev/shm/hog", "wb") as fh:  # tmpfs pages count against the container's memory too
    fh.writelines(b"\xff" * (16 << 20) for _ in range(16))
while True:
    held.append(bytearray(b"\x01" * (64 << 20)))
    print(f"holding {len(held) * 64} MiB", flush=True)
