# Prepare image: the evaluator image plus the Python stdlib's test suites, which the `stdlib`
# dataset uses as its validation text. Only the one-off data preparation job runs from it
# (compose.yaml, `make prepare`); no experiment container ever does.
ARG BASE_IMAGE=overnight-base:bookworm
ARG EVALUATOR_IMAGE=overnight-evaluator:latest

# --- the base's stdlib test suites (Debian ships them in a separate package) ---
FROM ${BASE_IMAGE} AS stdlib-tests
USER root
RUN set -eu; \
    stdlib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"; \
    if [ ! -e "$stdlib/test/test_grammar.py" ]; then \
        ver="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "libpython$ver-testsuite" >/dev/null; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    cd "$stdlib"; \
    find . \( -name site-packages -o -name dist-packages \) -prune -o \
        -type d \( -name test -o -name tests -o -name idle_test \) -prune -print \
        | tar -cf /stdlib-tests.tar -T -; \
    tar -tf /stdlib-tests.tar | grep -q 'test/test_grammar.py'

FROM ${EVALUATOR_IMAGE}
USER root
COPY --from=stdlib-tests /stdlib-tests.tar /tmp/stdlib-tests.tar
RUN set -eu; \
    stdlib="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"; \
    tar -xf /tmp/stdlib-tests.tar -C "$stdlib"; rm /tmp/stdlib-tests.tar; \
    test -e "$stdlib/test/test_grammar.py"
USER 1000:1000
ENTRYPOINT ["python3", "-m", "evaluator.prepare"]
CMD ["--help"]
