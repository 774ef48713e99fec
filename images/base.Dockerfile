# Base from a registry image (make images BASE_IMAGE=<image>): that image plus what the runtime
# needs from the OS, installed with apt-get only where it is missing: python3 with venv, and the
# compiler toolchain Triton and Inductor use the first time torch.compile runs (gcc, g++,
# libc6-dev, the Python headers). Any Debian or Ubuntu image works, with or without CUDA libraries
# or a torch of its own: the runtime image installs the pinned torch (images/build.py explains).
# The local base (images/build.py: debootstrap) is made with all of this already.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
USER root
RUN set -eu; \
    missing=""; \
    if command -v python3 >/dev/null; then \
        python3 -c 'import ensurepip' 2>/dev/null || missing="python3-venv"; \
        inc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
        [ -e "$inc/Python.h" ] || missing="$missing python3-dev"; \
    else \
        missing="python3 python3-venv python3-dev"; \
    fi; \
    command -v gcc >/dev/null || missing="$missing gcc"; \
    command -v g++ >/dev/null || missing="$missing g++"; \
    [ -e /usr/include/stdio.h ] || missing="$missing libc6-dev"; \
    if [ -n "$missing" ]; then \
        if ! command -v apt-get >/dev/null; then \
            echo "BASE_IMAGE lacks$missing and has no apt-get: use a Debian or Ubuntu image, or the local base" >&2; \
            exit 1; \
        fi; \
        echo "installing into the base:$missing"; \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; \
        rm -rf /var/lib/apt/lists/*; \
    fi
