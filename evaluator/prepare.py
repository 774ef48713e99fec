"""Build a data dir once: tokenizer, pre-tokenized train and val shards, manifest.

    python -m evaluator.prepare --profile cpu [--dataset stdlib|climbmix|parquet:<glob>] --out DIR

Steps (layout in evaluator/layout.py):
  1. Read the validation documents and remember the sha256 of each text.
  2. Train the BPE tokenizer on the train split only; train documents whose text also occurs in
     validation are dropped (here and when encoding), as are empty ones.
  3. Encode both splits with tiktoken's threaded batch encoder. Each document becomes
     [BOS] + tokens. A document longer than the profile's seq_len tokens is cut at line
     boundaries into pieces of at most seq_len tokens (BOS not counted, so a piece with its BOS
     fills at most one row of seq_len + 1), each its own BOS-prefixed document, so packing into
     rows wastes little (a single line longer than seq_len tokens is cut between tokens).
  4. Write uint16 shards of at most ~100M tokens, never splitting a document across shards, and
     the (shard, start, end) of every train document to train/docs.bin (so training never scans).
  5. Pack the whole val split into rows of seq_len + 1 tokens and draw the evaluation rows (and
     the causality probe's spare rows) from all of them, uniformly, with a secret from the OS that
     is not kept: eval/scored.bin and eval/spare.bin. Training code never sees eval/ or val/, and
     which val text is scored is known to nobody, so a train.py that memorises public val text
     needs all of it (and train.py is size-capped: sandbox.trainpy).
  6. Hash everything into manifest.json.
The dir is built as DIR.tmp-* next to DIR and renamed into place when complete; a complete DIR
(one with a manifest) is only replaced with --force.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import structlog
import tiktoken

from evaluator.dataloader import (
    distinct_rows,
    load_shards,
    packed_rows,
    sample_rows,
    shard_documents,
    spare_rows_needed,
)
from evaluator.datasets import (
    CLIMBMIX_TRAIN_SHARDS,
    DatasetError,
    TextSource,
    default_cache_dir,
    open_dataset,
)
from evaluator.download import DownloadError, RetryPolicy
from evaluator.layout import (
    DOCS_DTYPE,
    EVAL_DIR,
    EVAL_SCORED,
    EVAL_SPARE,
    MANIFEST,
    TOKEN_DTYPE,
    TRAIN_DIR,
    TRAIN_DOCS,
    VAL_DIR,
)
from evaluator.manifest import EvalEntry, SplitEntry, write_manifest
from evaluator.profiles import PROFILES, Profile, UnknownProfileError, get_profile
from evaluator.tokenizer import (
    TokenizerError,
    TrainedTokenizer,
    encode_batches,
    save_tokenizer,
    train_tokenizer,
)

log = structlog.get_logger("evaluator.prepare")

MAX_SHARD_TOKENS = 100_000_000
TOKENIZER_MAX_CHARS = 2_000_000_000  # text the BPE trainer sees at most
ENCODE_BATCH_DOCS = 1024


class PrepareError(ValueError):
    """Bad preparation input; the message is one line for a person."""


@dataclass(frozen=True)
class SplitStats:
    source_docs: int
    docs: int
    tokens: int
    shards: int

    def entry(self) -> SplitEntry:
        return SplitEntry(source_docs=self.source_docs, docs=self.docs, tokens=self.tokens, shards=self.shards)


@dataclass(frozen=True)
class PrepareSummary:
    out: Path
    profile: str
    dataset: str
    train: SplitStats
    val: SplitStats
    dropped_duplicates: int
    seconds: float

    def lines(self) -> list[str]:
        def split_line(name: str, stats: SplitStats) -> str:
            return (
                f"  {name:5s} {stats.source_docs:>9,} texts -> {stats.docs:>9,} docs, "
                f"{stats.tokens:>13,} tokens, {stats.shards} shard(s)"
            )

        return [
            f"prepared {self.out} (profile {self.profile}, dataset {self.dataset}) in {self.seconds:.1f} s",
            split_line("train", self.train),
            split_line("val", self.val),
            f"  dropped from train as also in val: {self.dropped_duplicates:,}",
        ]


# ---------------------------------------------------------------------------------------------
# the whole preparation


def prepare(
    profile: Profile,
    source: TextSource,
    out: Path,
    *,
    force: bool = False,
    max_shard_tokens: int = MAX_SHARD_TOKENS,
    threads: int | None = None,
) -> PrepareSummary:
    """Build the data dir for `profile` from `source` at `out`, atomically."""
    started = time.monotonic()
    out = Path(out)
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # readable by the unprivileged users of the train and eval containers
    try:
        train, val, dropped = _build(profile, source, tmp, max_shard_tokens, threads or _threads())
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareSummary(
        out=out,
        profile=profile.name,
        dataset=source.name,
        train=train,
        val=val,
        dropped_duplicates=dropped,
        seconds=time.monotonic() - started,
    )


def _build(
    profile: Profile, source: TextSource, root: Path, max_shard_tokens: int, threads: int
) -> tuple[SplitStats, SplitStats, int]:
    val_texts = _val_reader(source, profile)
    val_hashes = {_text_hash(text) for text in val_texts()}
    if not val_hashes:
        raise PrepareError(f"dataset {source.name} has no validation documents")
    dropped = _Tally()
    train_texts = _train_reader(source, profile, val_hashes, dropped)

    log.info("training tokenizer", vocab_size=profile.vocab_size, val_docs=len(val_hashes))
    tokenizer = train_tokenizer(_capped_chars(train_texts(), TOKENIZER_MAX_CHARS), profile.vocab_size)
    save_tokenizer(tokenizer, root)
    log.info("encoding", splits="val, train")
    encoding = tokenizer.encoding()

    bos = tokenizer.bos_id
    line_ends = line_end_table(tokenizer)
    val = _write_split(
        encoding, bos, line_ends, val_texts(), root / VAL_DIR, profile.seq_len, max_shard_tokens, threads
    )
    dropped.value = 0  # counted again while encoding: the count of one full pass
    train = _write_split(
        encoding,
        bos,
        line_ends,
        train_texts(),
        root / TRAIN_DIR,
        profile.seq_len,
        max_shard_tokens,
        threads,
        docs_file=root / TRAIN_DOCS,
    )
    if train.tokens == 0:
        raise PrepareError(f"dataset {source.name} has no train documents")
    eval_entry = write_eval_sample(root, profile, bos)

    facts = dict(
        source.facts,
        train_docs_dropped_as_in_val=dropped.value,
        eval_rule="uniform sample of the packed val rows, drawn with a secret that is not kept",
    )
    write_manifest(
        root,
        profile=profile.name,
        dataset=source.name,
        vocab_size=tokenizer.vocab_size,
        bos_id=tokenizer.bos_id,
        seq_len=profile.seq_len,
        splits={TRAIN_DIR: train.entry(), VAL_DIR: val.entry()},
        eval=eval_entry,
        source=facts,
    )
    return train, val, dropped.value


def write_eval_sample(root: Path, profile: Profile, bos: int, rng: np.random.Generator | None = None) -> EvalEntry:
    """Draw the scored rows and the probe's spare rows from all distinct packed val rows with a secret."""
    shards = load_shards(root, VAL_DIR)
    spans = shard_documents(shards, bos)
    scored_n, spare_n = profile.eval_rows, spare_rows_needed(profile)
    rng = rng or np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
    try:
        rows, drawn_from = sample_rows(
            distinct_rows(packed_rows(shards, spans, profile.seq_len + 1)), scored_n + spare_n, rng
        )
    except ValueError as exc:
        raise PrepareError(
            f"{exc}: profile {profile.name!r} scores {scored_n} rows of "
            f"{profile.seq_len + 1} tokens; prepare with more validation text"
        ) from None
    (root / EVAL_DIR).mkdir(exist_ok=True)
    rows[:scored_n].astype(TOKEN_DTYPE).tofile(root / EVAL_SCORED)
    rows[scored_n:].astype(TOKEN_DTYPE).tofile(root / EVAL_SPARE)
    del rng  # the secret goes with it
    return EvalEntry(rows=scored_n, spare_rows=spare_n, row_tokens=profile.seq_len + 1, drawn_from=drawn_from)


class _Tally:
    def __init__(self) -> None:
        self.value = 0


def _val_reader(source: TextSource, profile: Profile) -> Callable[[], Iterator[str]]:
    def read() -> Iterator[str]:
        return _capped_bytes(_nonempty(source.read_val()), profile.max_val_bytes)

    return read


def _train_reader(
    source: TextSource, profile: Profile, val_hashes: set[bytes], dropped: _Tally
) -> Callable[[], Iterator[str]]:
    def not_in_val(texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            if _text_hash(text) in val_hashes:
                dropped.value += 1
            else:
                yield text

    def read() -> Iterator[str]:
        return _capped_bytes(not_in_val(_nonempty(source.read_train())), profile.max_train_bytes)

    return read


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    return (text for text in texts if text and not text.isspace())


def _capped_bytes(texts: Iterable[str], cap: int | None) -> Iterator[str]:
    """Documents in order until the next one would pass `cap` UTF-8 bytes (at least one)."""
    total = 0
    for text in texts:
        if cap is not None:
            size = len(text.encode("utf-8", "surrogatepass"))
            if total and total + size > cap:
                return
            total += size
        yield text


def _capped_chars(texts: Iterable[str], cap: int) -> Iterator[str]:
    total = 0
    for text in texts:
        if total >= cap:
            return
        total += len(text)
        yield text


def _text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


# ---------------------------------------------------------------------------------------------
# documents -> BOS-prefixed pieces -> shards


def _write_split(
    encoding: tiktoken.Encoding,
    bos: int,
    line_ends: np.ndarray,
    texts: Iterable[str],
    split_dir: Path,
    seq_len: int,
    max_shard_tokens: int,
    threads: int,
    docs_file: Path | None = None,
) -> SplitStats:
    writer = ShardWriter(split_dir, max_shard_tokens)
    source_docs = 0
    try:
        for batch, tokens in encode_batches(encoding, texts, ENCODE_BATCH_DOCS, threads):
            source_docs += len(batch)
            writer.add([_with_bos(bos, piece) for doc in tokens for piece in document_pieces(doc, seq_len, line_ends)])
    finally:
        writer.close()
    if docs_file is not None:
        np.asarray(writer.spans, dtype=DOCS_DTYPE).reshape(-1, 3).tofile(docs_file)
    return SplitStats(source_docs=source_docs, docs=writer.docs, tokens=writer.tokens, shards=writer.shards)


def _with_bos(bos: int, tokens: np.ndarray) -> np.ndarray:
    doc = np.empty(len(tokens) + 1, dtype=np.uint16)
    doc[0] = bos
    doc[1:] = tokens
    return doc


def line_end_table(tokenizer: TrainedTokenizer) -> np.ndarray:
    """bool per token id: the token's last byte ends a line (newline or carriage return)."""
    table = np.zeros(tokenizer.vocab_size, dtype=bool)
    for token_id, token in enumerate(tokenizer.ranks):
        table[token_id] = token.endswith((b"\n", b"\r"))
    return table


def document_pieces(tokens: Sequence[int], seq_len: int, line_ends: np.ndarray) -> list[np.ndarray]:
    """Cut a document's tokens into pieces of at most `seq_len`, at line boundaries.

    The cuts go after tokens whose last byte is a newline, in the document's own token list, so
    the pieces concatenated are exactly the document as tokenized whole, and each piece decodes
    to whole lines (the split pattern ends a pre-token at the last newline of a whitespace run,
    so such tokens occur at every line end). Each piece takes as many lines as fit; a line
    longer than seq_len tokens is cut between tokens.
    """
    doc = np.asarray(tokens, dtype=np.int64)
    if doc.size <= seq_len:
        return [doc]
    cuts = np.flatnonzero(line_ends[doc]) + 1  # positions right after a line's last token
    pieces = []
    start = 0
    while doc.size - start > seq_len:
        limit = start + seq_len
        best = np.searchsorted(cuts, limit, side="right") - 1  # last cut at or before limit
        stop = int(cuts[best]) if best >= 0 and cuts[best] > start else limit
        pieces.append(doc[start:stop])
        start = stop
    pieces.append(doc[start:])
    return pieces


class ShardWriter:
    """Appends BOS-prefixed documents to shard_NNNNN.bin files of at most `max_tokens` tokens."""

    def __init__(self, split_dir: Path, max_tokens: int) -> None:
        self.split_dir = split_dir
        self.max_tokens = max_tokens
        self.shards = 0
        self.docs = 0
        self.tokens = 0
        self._in_shard = 0
        self._handle: BinaryIO | None = None
        self.spans: list[tuple[int, int, int]] = []  # (shard, start, end) of every document written
        split_dir.mkdir(parents=True, exist_ok=True)

    def add(self, docs: Sequence[np.ndarray]) -> None:
        pending: list[np.ndarray] = []
        pending_tokens = 0
        for doc in docs:
            full = self._in_shard + pending_tokens + len(doc) > self.max_tokens
            if self._handle is None or (full and self._in_shard + pending_tokens > 0):
                self._write(pending)
                self._next_shard()
                pending, pending_tokens = [], 0
            pending.append(doc)
            pending_tokens += len(doc)
        self._write(pending)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _write(self, docs: list[np.ndarray]) -> None:
        if not docs:
            return
        assert self._handle is not None, "add() opens a shard before it writes"
        block = np.concatenate(docs).astype(TOKEN_DTYPE, copy=False)
        block.tofile(self._handle)
        start = self._in_shard
        for doc in docs:
            self.spans.append((self.shards - 1, start, start + len(doc)))
            start += len(doc)
        self._in_shard += block.size
        self.tokens += block.size
        self.docs += len(docs)

    def _next_shard(self) -> None:
        self.close()
        self._handle = open(self.split_dir / f"shard_{self.shards:05d}.bin", "wb")
        self.shards += 1
        self._in_shard = 0


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# the destination: refuse to clobber, publish atomically


def check_destination(out: Path, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise PrepareError(f"{out} exists and is not a directory: choose another --out")
    if not out.is_dir() or force:
        return
    if (out / MANIFEST).exists():
        raise PrepareError(f"{out} is already a prepared data dir: use --force to rebuild it")
    if any(out.iterdir()):
        raise PrepareError(f"{out} is not empty and has no manifest: choose another --out or use --force to replace it")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished build into place; an old dir (only with --force) is removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluator.prepare",
        description="Build a data dir: tokenizer, train/val shards, manifest.",
    )
    parser.add_argument(
        "--profile",
        default=os.environ.get("OVERNIGHT_PROFILE", "cpu"),
        help=f"one of {', '.join(PROFILES)} (default: $OVERNIGHT_PROFILE or cpu)",
    )
    parser.add_argument("--dataset", default=None, help="stdlib, climbmix or parquet:<glob> (default: the profile's)")
    parser.add_argument(
        "--val",
        default=None,
        metavar="parquet:<glob>",
        help="a private validation set: every document of these parquet files (a "
        "`text` column) is validation; the dataset's own validation text is not used",
    )
    parser.add_argument("--out", type=Path, default=None, help="data dir (default: data/<profile>)")
    parser.add_argument("--force", action="store_true", help="replace a prepared data dir")
    parser.add_argument(
        "--train-shards",
        type=int,
        default=CLIMBMIX_TRAIN_SHARDS,
        help=f"climbmix: train shards to download (default {CLIMBMIX_TRAIN_SHARDS})",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads are kept (default: $OVERNIGHT_CACHE_DIR or ~/.cache/overnight)",
    )
    parser.add_argument(
        "--download-attempts",
        type=int,
        default=RetryPolicy.attempts,
        help=f"climbmix: tries per file (default {RetryPolicy.attempts})",
    )
    parser.add_argument(
        "--download-backoff",
        type=float,
        default=RetryPolicy.backoff_s,
        help=f"climbmix: first retry wait in seconds, doubling (default {RetryPolicy.backoff_s})",
    )
    parser.add_argument("--max-shard-tokens", type=int, default=MAX_SHARD_TOKENS, help="tokens per shard file at most")
    parser.add_argument("--threads", type=int, default=None, help="encoder threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        profile = get_profile(args.profile)
        if args.max_shard_tokens < profile.seq_len + 1:
            raise PrepareError(f"--max-shard-tokens must be at least seq_len + 1 = {profile.seq_len + 1}")
        if args.download_attempts < 1 or args.download_backoff < 0:
            raise PrepareError("--download-attempts must be >= 1 and --download-backoff >= 0")
        retry = RetryPolicy(
            attempts=args.download_attempts,
            backoff_s=args.download_backoff,
            max_backoff_s=max(RetryPolicy.max_backoff_s, args.download_backoff),
        )
        out = args.out or Path("data") / profile.name
        check_destination(out, args.force)  # before any download
        source = open_dataset(
            args.dataset or profile.dataset,
            cache_dir=args.cache_dir or default_cache_dir(),
            train_shards=args.train_shards,
            retry=retry,
            val=args.val,
        )
        summary = prepare(
            profile, source, out, force=args.force, max_shard_tokens=args.max_shard_tokens, threads=args.threads
        )
    except (PrepareError, DatasetError, DownloadError, TokenizerError, UnknownProfileError) as error:
        print(f"prepare: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prepare: interrupted; nothing was written", file=sys.stderr)
        return 130
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: summary
    sys.exit(main())
