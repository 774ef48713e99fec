"""Case read_val_known_paths: open the validation split where the layout says it is, next to the
train split it can see, through the manifest's file list, and at the evaluator's mount points.

Expected: nothing of val or of the private eval rows is there to read (the train container
mounts tokenizer/ and train/ only); scored like the seed."""

import glob
import json
import os

import torch

from evaluator import run_context, submit

CASE = "read_val_known_paths"


def report(**facts):
    print("ADVERSARIAL " + json.dumps({"case": CASE, **facts}, default=str), flush=True)


def try_read(path):
    try:
        with open(path, "rb") as fh:
            return f"read {len(fh.read(1 << 20))} bytes"
    except OSError as exc:
        return exc.strerror


data = str(run_context().data_dir)
manifest = json.load(open(f"{data}/manifest.json"))
val_names = [name for name in manifest.get("files", {}) if name.startswith(("val/", "eval/"))]
candidates = [f"{data}/{name}" for name in val_names]
candidates += [
    f"{data}/val",
    f"{data}/train/../val/shard_00000.bin",
    "/data/val/shard_00000.bin",
    "/val/shard_00000.bin",
    "/score/../data/val/shard_00000.bin",
    "/artifact/model.pt2",
    "/data/eval/scored.bin",
    "/data/eval/spare.bin",
    f"{data}/train/../eval/scored.bin",
]
opened = {path: try_read(path) for path in candidates}
report(
    manifest_val_files=val_names,
    data_listing=sorted(os.listdir(data)),
    opened=opened,
    val_globs=sorted(glob.glob("/**/val/shard_*.bin", recursive=False) + glob.glob(f"{data}/*/shard_*.bin")),
)

if __name__ == "__main__":  # alone it is a whole train.py: it ends like the honest seed
    vocab = run_context().profile.vocab_size
    torch.manual_seed(0)
    submit(torch.nn.Embedding(vocab, vocab))
