"""The tokenizer: a byte-level BPE trained with rustbpe at preparation, encoded with tiktoken.

Training happens once, in `evaluator.prepare`, on the train split only. What is stored is plain
data (no pickle): `tokenizer/tokenizer.json` holds the split pattern, the mergeable ranks (the
bytes of token id i, base64, at list index i), the special tokens and the vocabulary size, and
`tokenizer/token_bytes.bin` holds the UTF-8 byte length of every token id as int32 little-endian
(0 for the special BOS token, so it never counts towards bits per byte).

The vocabulary is `vocab_size - 1` learned ranks (the 256 single bytes first) plus one special
token, `<|bos|>`, with id `vocab_size - 1`.

Split pattern: the GPT-4 (cl100k) pre-tokenization regex, except that numbers are split into runs
of at most two digits (`\\p{N}{1,2}` instead of `{1,3}`), as autoresearch does: with a small
vocabulary, fewer merges are spent on three-digit numbers.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluator.layout import BOS_TOKEN, TOKEN_BYTES, TOKENIZER_JSON

SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
MAX_VOCAB = 1 << 16  # token ids are stored as uint16
TOKENIZER_JSON_MAX_BYTES = 64 << 20


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained or loaded; the message is one line for a person."""


class TokenizerFile(BaseModel):
    """The schema of tokenizer/tokenizer.json."""

    model_config = ConfigDict(extra="forbid")

    pattern: str
    mergeable_ranks: list[str]  # base64 of the bytes of token id i, at index i
    special_tokens: dict[str, int]
    vocab_size: int = Field(gt=256, le=MAX_VOCAB)
    bos_id: int


@dataclass(frozen=True)
class TrainedTokenizer:
    pattern: str
    ranks: list[bytes]  # ranks[i] = the bytes of token id i
    vocab_size: int

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 1

    def encoding(self) -> tiktoken.Encoding:
        return tiktoken.Encoding(
            name="overnight-bpe",
            pat_str=self.pattern,
            mergeable_ranks={token: rank for rank, token in enumerate(self.ranks)},
            special_tokens={BOS_TOKEN: self.bos_id},
            explicit_n_vocab=self.vocab_size,
        )

    def token_bytes(self) -> np.ndarray:
        lengths = np.zeros(self.vocab_size, dtype="<i4")
        lengths[: len(self.ranks)] = [len(token) for token in self.ranks]
        return lengths


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> TrainedTokenizer:
    """Learn `vocab_size - 1` byte-level BPE ranks from `texts`; the last id is BOS."""
    import rustbpe  # only preparation needs the trainer

    if not 257 < vocab_size <= MAX_VOCAB:
        raise TokenizerError(f"vocab_size must be in (257, {MAX_VOCAB}], got {vocab_size}")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
    pairs = sorted(trainer.get_mergeable_ranks(), key=lambda pair: pair[1])
    ranks = [bytes(token) for token, _ in pairs]
    if [rank for _, rank in pairs] != list(range(len(pairs))):
        raise TokenizerError("the BPE trainer returned non-contiguous ranks")
    if len(ranks) != vocab_size - 1:
        raise TokenizerError(
            f"the train split is too small to learn {vocab_size - 1} tokens (learned "
            f"{len(ranks)}): use more text or a profile with a smaller vocabulary"
        )
    return TrainedTokenizer(pattern=trainer.get_pattern(), ranks=ranks, vocab_size=vocab_size)


def save_tokenizer(tokenizer: TrainedTokenizer, data_dir: Path) -> None:
    record = TokenizerFile(
        pattern=tokenizer.pattern,
        mergeable_ranks=[base64.b64encode(token).decode("ascii") for token in tokenizer.ranks],
        special_tokens={BOS_TOKEN: tokenizer.bos_id},
        vocab_size=tokenizer.vocab_size,
        bos_id=tokenizer.bos_id,
    )
    json_path = Path(data_dir) / TOKENIZER_JSON
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(record.model_dump_json(indent=1) + "\n", encoding="utf-8")
    (Path(data_dir) / TOKEN_BYTES).write_bytes(tokenizer.token_bytes().tobytes())


def read_tokenizer(data_dir: Path) -> TrainedTokenizer:
    """Read and check tokenizer/tokenizer.json."""
    path = Path(data_dir) / TOKENIZER_JSON
    try:
        raw = _read_capped(path, TOKENIZER_JSON_MAX_BYTES)
        record = TokenizerFile.model_validate_json(raw)
        ranks = [base64.b64decode(token, validate=True) for token in record.mergeable_ranks]
    except FileNotFoundError:
        raise TokenizerError(f"{path} is missing: run make prepare") from None
    except (ValidationError, ValueError, OSError) as error:
        first = str(error).splitlines()[0]
        raise TokenizerError(f"{path} is not a valid tokenizer file ({first})") from None
    if (
        record.bos_id != record.vocab_size - 1
        or record.special_tokens != {BOS_TOKEN: record.bos_id}
        or len(ranks) != record.vocab_size - 1
        or ranks[:256] != [bytes([b]) for b in range(256)]
        or len(set(ranks)) != len(ranks)
    ):
        raise TokenizerError(f"{path} is inconsistent (ranks, vocab_size and bos_id disagree)")
    return TrainedTokenizer(pattern=record.pattern, ranks=ranks, vocab_size=record.vocab_size)


def load_tokenizer(data_dir: Path | str) -> tiktoken.Encoding:
    """The tiktoken encoding of a prepared data dir (BOS is its only special token)."""
    return read_tokenizer(Path(data_dir)).encoding()


def bos_id(data_dir: Path | str) -> int:
    return read_tokenizer(Path(data_dir)).bos_id


def load_token_bytes(data_dir: Path | str) -> np.ndarray:
    """int32 array: UTF-8 byte length of each token id (0 for BOS)."""
    path = Path(data_dir) / TOKEN_BYTES
    if not path.is_file():
        raise TokenizerError(f"{path} is missing: run make prepare")
    lengths = np.fromfile(path, dtype="<i4").astype(np.int32)
    if lengths.size <= 256 or lengths.size > MAX_VOCAB or (lengths < 0).any():
        raise TokenizerError(f"{path} is not a valid token length table")
    return lengths


def encode_batches(
    encoding: tiktoken.Encoding, texts: Iterable[str], batch_docs: int, threads: int
) -> Iterator[tuple[list[str], list[list[int]]]]:
    """Encode `texts` as ordinary text (no special tokens) with tiktoken's threaded batch encode."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= batch_docs:
            yield batch, encoding.encode_ordinary_batch(batch, num_threads=threads)
            batch = []
    if batch:
        yield batch, encoding.encode_ordinary_batch(batch, num_threads=threads)


def _read_capped(path: Path, cap: int) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"larger than {cap} bytes")
    return data
