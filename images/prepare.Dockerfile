# Prepare image: the evaluator image plus the Python stdlib's test suites, which the `stdlib`
# dataset uses as its validation text. Only the one-off data preparation job runs from it
# (compose.yaml, `make prepare`); no experiment container ever does.
#
# The suites come from Debian's packaged test suite, installed in a stage of their own built
# from a Debian bookworm image (the local base, or debian:bookworm-slim; images/build.py picks),
# and are copied into the stdlib of the evaluator image's interpreter, whatever Python that is
# (Debian's /usr/lib/python3.11, a conda prefix, ...). So the validation text is the same files
# whichever base the images were built on, and no base needs a test suite of its own.
ARG DEBIAN_IMAGE=overnight-base:bookworm
ARG EVALUATOR_IMAGE=overnight-evaluator:latest

# --- Debian's stdlib test suites ----------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS stdlib-tests
USER root
ARG SUITE_PYTHON=3.11
RUN set -eu; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "libpython${SUITE_PYTHON}-testsuite" >/dev/null; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir /suites; cd "/usr/lib/python${SUITE_PYTHON}"; \
    find . \( -name site-packages -o -name dist-packages \) -prune -o \
        -type d \( -name test -o -name tests -o -name idle_test \) -prune -print \
        | tar -cf - -T - | tar -xf - -C /suites; \
    test -e /suites/test/test_grammar.py

# --- the image ----------------------------------------------------------------------------------
FROM ${EVALUATOR_IMAGE}
# The evaluator image's stdlib (images/build.py reads it from the base's interpreter).
ARG STDLIB=/usr/lib/python3.11
COPY --from=stdlib-tests /suites/ ${STDLIB}/
RUN python3 -c "import os, sys, sysconfig; stdlib = sysconfig.get_paths()['stdlib']; \
sys.exit(0 if os.path.exists(stdlib + '/test/test_grammar.py') else \
         'the test suites went to %s but the stdlib is %s: build with images/build.py' % ('$STDLIB', stdlib))"
USER 1000:1000
ENTRYPOINT ["python3", "-m", "evaluator.prepare"]
CMD ["--help"]
