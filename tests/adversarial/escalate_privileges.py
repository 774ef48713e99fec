"""Case escalate_privileges: try to become root or gain capabilities to get around the lockdown:
setuid(0), a new user namespace (where one is root), mount a filesystem, and run the image's
setuid-root binaries (mount, su).

Expected: every attempt is refused (non-root, all capabilities dropped, no-new-privileges);
scored like the seed."""

import ctypes
import json
import os
import stat
import subprocess

import torch

from evaluator import run_context, submit

CASE = "escalate_privileges"
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def run(command):
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": type(exc).__name__}
    return {"exit": done.returncode, "out": (done.stdout + done.stderr).strip()[-200:]}


libc = ctypes.CDLL(None, use_errno=True)


def syscall_result(code):
    return "ok" if code == 0 else os.strerror(ctypes.get_errno())


setuid_binaries = []
for root in ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/lib"):
    for dirpath, _, filenames in os.walk(root, onerror=lambda e: None):
        for name in filenames:
            try:
                if os.lstat(os.path.join(dirpath, name)).st_mode & (stat.S_ISUID | stat.S_ISGID):
                    setuid_binaries.append(os.path.join(dirpath, name))
            except OSError:
                pass
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
report(
    uid=os.getuid(),
    euid=os.geteuid(),
    cap_eff=status["CapEff"].strip(),
    cap_bnd=status["CapBnd"].strip(),
    no_new_privs=status["NoNewPrivs"].strip(),
    setuid0=attempt(lambda: os.setuid(0)),
    unshare_user=syscall_result(libc.unshare(CLONE_NEWUSER)),
    unshare_mount=syscall_result(libc.unshare(CLONE_NEWNS)),
    mount_tmpfs=syscall_result(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)),
    setuid_binaries=sorted(setuid_binaries),
    setuid_mount=run(["mount", "-t", "tmpfs", "none", "/mnt"]),
    setuid_su=run(["su", "-c", "id -u", "root"]),
)

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
