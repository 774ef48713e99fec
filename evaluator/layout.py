"""The data directory's layout, shared by preparation, the dataloader, scoring and the sandbox.

<data_dir>/
  manifest.json            sha256 and size of every file below, plus the preparation's facts
  tokenizer/tokenizer.json tiktoken pattern + mergeable ranks (base64) + special tokens
  tokenizer/token_bytes.bin int32 little-endian: UTF-8 byte length of each token id (0 = special)
  train/shard_NNNNN.bin    uint16 token ids; every document starts with BOS
  train/docs.bin           int64 (shard, start, end) of every train document, computed once
  val/shard_NNNNN.bin      same format; disjoint from train by construction
  eval/scored.bin          uint16 (rows, seq_len + 1): the scored rows, a sample of the packed
                           val split drawn with a secret at preparation (the secret is not kept)
  eval/spare.bin           uint16 (rows, seq_len + 1): other sampled val rows, for the probe

The train container mounts tokenizer/ and train/ (and manifest.json); the eval container mounts
tokenizer/, eval/ and manifest.json. val/ is mounted by no container. Nothing else crosses.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_JSON = "tokenizer/tokenizer.json"
TOKEN_BYTES = "tokenizer/token_bytes.bin"
TRAIN_DIR = "train"
VAL_DIR = "val"
EVAL_DIR = "eval"
EVAL_SCORED = "eval/scored.bin"
EVAL_SPARE = "eval/spare.bin"
TRAIN_DOCS = "train/docs.bin"
DOCS_DTYPE = "<i8"  # (shard, start, end) per document
SHARD_GLOB = "shard_*.bin"
BOS_TOKEN = "<|bos|>"
TOKEN_DTYPE = "<u2"  # uint16, little-endian; every vocab here fits

ARTIFACT_NAME = "model.pt2"  # what submit() writes into the run's out dir
SCORE_NAME = "score.json"  # what the evaluator writes into the run's score dir


def shard_paths(data_dir: Path, split: str) -> list[Path]:
    """The shards of one split in order; an empty list if the split is missing."""
    return sorted((Path(data_dir) / split).glob(SHARD_GLOB))
