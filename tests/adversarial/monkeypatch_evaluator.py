"""Case monkeypatch_evaluator: replace the evaluator's functions and constants in this process
(the scorer, the probe, the profile, the manifest check), try to write them back to disk, and
plant a shadowing `evaluator` package and a sitecustomize where a later Python might import them.

Expected: scored honestly, exactly like the seed: the score is computed in another container from
the image's read-only evaluator; every patch here dies with this process."""

import dataclasses
import json
import os
import sys

import torch

import evaluator.manifest
import evaluator.probe
import evaluator.profiles
import evaluator.score
from evaluator import run_context, submit

CASE = "monkeypatch_evaluator"


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


def try_write(path, text, mode="w"):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, mode) as fh:
            fh.write(text)
        return "written"
    except OSError as exc:
        return exc.strerror


# In-process patches: a scorer that says 0 nats over many bytes, a probe that always passes, a
# profile with fewer eval tokens, a manifest check that accepts anything.
evaluator.score.cross_entropy_totals = lambda *a, **k: evaluator.score.Totals(0.0, 1, 10**9)
evaluator.probe.run_probe = lambda *a, **k: evaluator.probe.ProbeResult(
    passed=True, checks=99, max_abs_diff=0.0, tolerance=1.0
)
evaluator.score.run_probe = evaluator.probe.run_probe
profile = evaluator.profiles.PROFILES["test"]
evaluator.profiles.PROFILES["test"] = dataclasses.replace(profile, eval_tokens=profile.eval_batch_tokens)
evaluator.manifest.verify_manifest = lambda *a, **k: "0" * 64

# On disk: the evaluator's own files, a shadowing package, a sitecustomize, a .pth file.
root = os.path.dirname(os.path.dirname(evaluator.score.__file__))
home = os.path.expanduser("~")
site = f"python{sys.version_info.major}.{sys.version_info.minor}"
evil = "VAL_BPB_OVERRIDE = 0.0001\n"
writes = {
    f"{root}/evaluator/score.py": try_write(f"{root}/evaluator/score.py", evil, "a"),
    f"{root}/evaluator/profiles.py": try_write(f"{root}/evaluator/profiles.py", evil, "a"),
    f"{root}/sitecustomize.py": try_write(f"{root}/sitecustomize.py", evil),
    f"{home}/.local/lib/{site}/site-packages/evaluator/__init__.py": try_write(
        f"{home}/.local/lib/{site}/site-packages/evaluator/__init__.py", evil
    ),
    f"{sys.prefix}/lib/{site}/site-packages/zz_evil.pth": try_write(
        f"{sys.prefix}/lib/{site}/site-packages/zz_evil.pth", "import os\n"
    ),
    "/tmp/sitecustomize.py": try_write("/tmp/sitecustomize.py", evil),
}
os.environ["PYTHONPATH"] = "/tmp:" + os.environ.get("PYTHONPATH", "")
check = evaluator.score.cross_entropy_totals(None, None, None)
report(evaluator_root=root, in_process_patched=check.nats == 0.0, writes=writes)

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
