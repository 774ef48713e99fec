# Evaluator image: the runtime plus the trusted evaluator package, root-owned and read-only, and a
# non-root user with a passwd entry (torch's Inductor looks the user up; getpass must work).
# Both containers of an experiment start from this image; the sandbox runs them as uid 1000.
ARG RUNTIME_IMAGE=overnight-runtime:latest
FROM ${RUNTIME_IMAGE}
RUN set -eu; \
    if ! getent passwd 1000 >/dev/null; then \
        getent group 1000 >/dev/null || groupadd --gid 1000 overnight; \
        useradd --uid 1000 --gid 1000 --home-dir /home/overnight --create-home \
                --shell /bin/sh overnight; \
    fi; \
    mkdir -p /home/overnight /work /data /out /artifact /score
COPY evaluator/ /opt/overnight/evaluator/
RUN python3 -m compileall -q /opt/overnight/evaluator \
 && chown -R root:root /opt/overnight \
 && chmod -R a-w,a+rX /opt/overnight
ENV PYTHONPATH=/opt/overnight \
    HOME=/home/overnight
WORKDIR /tmp
USER 1000:1000
CMD ["python3", "-c", "import evaluator"]
