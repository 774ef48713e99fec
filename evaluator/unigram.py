"""A reference score: bits per byte of a unigram model of the train split, on exactly the
validation targets the evaluator scores. A trained model that does not beat it learned nothing.

    python -m evaluator.unigram --data-dir data/cpu --profile cpu
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from evaluator import layout
from evaluator.dataloader import eval_data, load_split
from evaluator.profiles import get_profile
from evaluator.tokenizer import load_token_bytes


def unigram_bpb(data_dir: Path, profile_name: str) -> float:
    profile = get_profile(profile_name)
    token_bytes = load_token_bytes(data_dir)
    counts = np.bincount(load_split(data_dir, layout.TRAIN_DIR), minlength=profile.vocab_size)
    probs = (counts + 1) / (counts.sum() + profile.vocab_size)  # add-one: no token has probability 0
    targets = eval_data(data_dir, profile).targets.reshape(-1)
    scored = targets[token_bytes[targets] > 0]  # as the evaluator: BOS targets carry no bytes
    nats = -np.log(probs[scored]).sum()
    return float(nats / (math.log(2) * token_bytes[scored].sum()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluator.unigram", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args(argv)
    print(f"unigram_val_bpb: {unigram_bpb(args.data_dir, args.profile):.6f}")


if __name__ == "__main__":
    main()
