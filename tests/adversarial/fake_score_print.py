"""Case fake_score_print: print the evaluator's own output block with a fake val_bpb, and write a
fake score.json everywhere the train container can write (and try where it cannot).

Expected: scored honestly; the ledger, run.json and score.json hold the real val_bpb, never the
printed one; the fake files stay in the run's out/ (which nothing reads a score from)."""

import json
import os

import torch

from evaluator import run_context, submit

CASE = "fake_score_print"
FAKE_BPB = 0.000123


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


def try_write(path, text):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
        return "written"
    except OSError as exc:
        return exc.strerror


fake = {
    "status": "ok",
    "reason": None,
    "profile": run_context().profile.name,
    "val_bpb": FAKE_BPB,
    "val_loss_nats": 0.0001,
    "tokens": 4096,
    "bytes": 16384,
    "probe": {"passed": True, "checks": 12, "max_abs_diff": 0.0, "tolerance": 0.0001, "failure": None},
    "eval_seconds": 0.1,
    "manifest_sha256": "0" * 64,
    "artifact_sha256": "0" * 64,
}
# What `python -m evaluator.score` prints, and the ledger's line format, with the fake number.
print(f"val_bpb: {FAKE_BPB:.6f}\nval_loss_nats: 0.000100\ntokens: 4096\nbytes: 16384", flush=True)
print(f"0000000\t{FAKE_BPB:.6f}\t0.0\tkeep\tfake row", flush=True)
home = os.path.expanduser("~")
targets = [
    "/out/score.json",
    "/out/score/score.json",
    "/out/../score/score.json",
    "/score/score.json",
    "/tmp/score.json",
    f"{home}/score.json",
    "/work/score.json",
    "/data/score.json",
    "/artifact/score.json",
]
report(fake_bpb=FAKE_BPB, writes={t: try_write(t, json.dumps(fake)) for t in targets})

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
