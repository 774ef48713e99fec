"""The fetch program: run by the runner inside a trusted fetch pod (the evaluator image, the
job's output volume mounted read-only), as `python -I -S -c <this file> DIR NAME MAX_BYTES`.
Standard library only; it never follows a link.

It checks DIR/NAME the way sandbox.hostile checks a file on the host (a regular file, not a
symlink, no setuid/setgid bit, at most MAX_BYTES of apparent size) and writes on stdout either

    REFUSED <reason>\\n                          (exit 3)
or  OK <size>\\n<exactly size bytes>END <sha256 hex>\\n   (exit 0)

so the host can check the transfer (sandbox.kubernetes.fetch) before it trusts a byte of it.
"""

import hashlib
import os
import stat
import sys

CHUNK = 1 << 20


def refuse(reason):
    sys.stdout.buffer.write(("REFUSED " + reason + "\n").encode("utf-8", "replace"))
    sys.stdout.buffer.flush()
    sys.exit(3)


def main(directory, name, max_bytes):
    if "/" in name or name in ("", ".", ".."):
        refuse(f"bad file name {name!r}")
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        refuse(f"no {name}")
    if stat.S_ISLNK(st.st_mode):
        refuse(f"{name} is a symlink; refused")
    if not stat.S_ISREG(st.st_mode):
        refuse(f"{name} is not a regular file; refused")
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        refuse(f"{name} has a setuid or setgid bit; refused")
    if st.st_size > max_bytes:
        refuse(f"{name} is {st.st_size} bytes, over the {max_bytes}-byte cap")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        refuse(f"cannot open {name}: {exc.strerror}")
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode) or (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
        refuse(f"{name} changed while it was checked; refused")
    size = st2.st_size
    out = sys.stdout.buffer
    out.write(b"OK %d\n" % size)
    digest = hashlib.sha256()
    left = size
    with os.fdopen(fd, "rb") as src:
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                out.flush()
                sys.exit(4)  # shorter than it said: no END line, the host refuses the transfer
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    out.write(b"END " + digest.hexdigest().encode() + b"\n")
    out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
