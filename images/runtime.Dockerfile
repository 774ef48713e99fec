# Runtime image: a Python base plus torch and the evaluator's dependencies, installed offline
# from the host's wheelhouse (images/.wheelhouse, filled by images/build.py).
#   BASE_IMAGE=overnight-base:bookworm                          local base: debootstrap + import
#   BASE_IMAGE=pytorch/pytorch:<ver>-cuda<x>-cudnn9-runtime     with a registry: CUDA torch inside
# The legacy builder is enough: no BuildKit features are used.
ARG BASE_IMAGE=overnight-base:bookworm
FROM ${BASE_IMAGE}
ARG TORCH_REQUIREMENT=torch==2.13.0
COPY images/.wheelhouse/ images/requirements.txt /wheelhouse/
# --system-site-packages: a CUDA base image's own torch stays visible in the venv.
# The stdlib's own test suites are the `stdlib` dataset's validation text: training code must
# never be able to read them, so no image that runs train.py has them (see prepare.Dockerfile).
RUN set -eu; \
    python3 -m venv --system-site-packages /opt/venv; \
    /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check --quiet \
        --find-links /wheelhouse -r /wheelhouse/requirements.txt ${TORCH_REQUIREMENT}; \
    /opt/venv/bin/python -c "import torch, numpy, tiktoken, pyarrow, rustbpe, pydantic"; \
    stdlib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"; \
    cd "$stdlib"; \
    find . \( -name site-packages -o -name dist-packages \) -prune -o \
        -type d \( -name test -o -name tests -o -name idle_test \) -prune -exec rm -rf {} +; \
    if find . \( -name site-packages -o -name dist-packages \) -prune -o -name 'test_*.py' -print | grep -q .; then \
        echo "stdlib test files remain in $stdlib" >&2; exit 1; fi
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=void
ENTRYPOINT []
CMD ["python3"]
