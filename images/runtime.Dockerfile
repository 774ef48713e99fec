# Runtime image: a base with Python and the compiler toolchain (the local debootstrap base, or
# base.Dockerfile on a registry image) plus a venv holding the pinned torch and the evaluator's
# dependencies, installed offline from the host's wheelhouse (images/.wheelhouse, filled by
# images/build.py). The wheels are copied into a build stage only, so they never reach the image.
# The legacy builder is enough: no BuildKit features are used.
ARG BASE_IMAGE=overnight-base:bookworm

# --- the venv -------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS venv
USER root
# KEEP_BASE_TORCH=1: use the base image's own torch (the venv sees the base's site-packages) and
# install none; otherwise the venv is isolated and gets the torch== line of requirements.txt.
ARG KEEP_BASE_TORCH=
COPY images/.wheelhouse/ images/requirements.txt /wheelhouse/
RUN set -eu; \
    if [ -n "$KEEP_BASE_TORCH" ]; then \
        python3 -m venv --system-site-packages /opt/venv; \
        grep -v '^torch==' /wheelhouse/requirements.txt > /tmp/requirements.txt; \
    else \
        python3 -m venv /opt/venv; \
        cp /wheelhouse/requirements.txt /tmp/requirements.txt; \
    fi; \
    /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check --quiet \
        --find-links /wheelhouse -r /tmp/requirements.txt; \
    have="$(/opt/venv/bin/python -c 'import numpy, tiktoken, pyarrow, rustbpe, pydantic, torch; \
print(torch.__version__.split("+")[0])')"; \
    pinned="$(sed -n 's/^torch==\([^ #;]*\).*/\1/p' /wheelhouse/requirements.txt)"; \
    if [ -z "$KEEP_BASE_TORCH" ] && [ "$have" != "$pinned" ]; then \
        echo "torch $have is in the image but images/requirements.txt pins torch==$pinned" >&2; exit 1; fi

# --- the image ------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
USER root
# The toolchain torch.compile needs at run time (Inductor's C++ backend, Triton's launchers).
# The stdlib's test suites are the `stdlib` dataset's validation text: training code must never
# be able to read them, so no image that runs train.py has them (see prepare.Dockerfile). They
# go from the interpreter's stdlib and from every other copy of a CPython stdlib in the base
# (a system Python beside a conda one, a conda package cache).
RUN set -eu; \
    gcc --version >/dev/null; g++ --version >/dev/null; \
    inc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    test -e "$inc/Python.h" || { echo "no Python.h in $inc: the base needs the Python headers" >&2; exit 1; }; \
    stdlib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"; \
    for lib in "$stdlib" $(find / -xdev -type d -path '*/lib/python3.*' -prune 2>/dev/null); do \
        find "$lib" \( -name site-packages -o -name dist-packages \) -prune -o \
            -type d \( -name test -o -name tests -o -name idle_test \) -prune -exec rm -rf {} +; \
    done; \
    left="$(find / -xdev \( -name site-packages -o -name dist-packages \) -prune -o \
            -path '*/lib/python3*' -name 'test_*.py' -print 2>/dev/null | head -n 3)"; \
    if [ -n "$left" ]; then echo "stdlib test files remain: $left" >&2; exit 1; fi
COPY --from=venv /opt/venv /opt/venv
# NVIDIA_VISIBLE_DEVICES=void: no GPU unless the sandbox asks for one by device request.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=void \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
ENTRYPOINT []
CMD ["python3"]
