"""What a train.py may be before anything runs it: small, UTF-8 Python that compiles, carrying
little embedded data. The controller refuses a proposal that fails this (the agent sees the
reason and may try again); the sandbox refuses to start one too.

Why these caps. The evaluation rows are a secret sample of the whole validation split
(evaluator.prepare), so a train.py that memorises validation text needs all of it; the caps
bound what it can carry:
- train.py is at most MAX_BYTES (64 KiB): autoresearch's train.py is about 25 KB and the seed
  about 12 KB, so this leaves 2.5x autoresearch's room for real growth;
- the text in its literals and comments (strings, bytes, f-string text, comments, numbers),
  compressed with zlib, is at most MAX_EMBEDDED_BYTES (8 KiB): the seed's is 2.0 KiB and a
  30 KB well-commented module of this project has about 3 KiB, so 8 KiB is four times the seed.
Whatever a train.py does with its own source, all it can carry is bounded by the file size: code
compresses about 3x, so at most about 20 KiB of information, and at most ~80 KB of text after
zlib or lzma. The stdlib validation split is about 20 MB and a ClimbMix shard a few hundred MB,
so a memoriser covers at most ~0.4% (stdlib) or ~0.03% (ClimbMix) of the text the eval rows are
drawn from. docs/security.md has the measured numbers.
"""

from __future__ import annotations

import ast
import io
import tokenize
import zlib

MAX_BYTES = 64 * 1024
MAX_EMBEDDED_BYTES = 8 * 1024
_DATA_TOKENS = frozenset({"STRING", "COMMENT", "NUMBER", "FSTRING_MIDDLE"})


class TrainPyRefused(ValueError):
    """A train.py that is not run; the message is one line the agent reads."""


def embedded_bytes(source: bytes) -> int:
    """zlib-compressed size of everything in literals and comments of a train.py."""
    parts: list[bytes] = []
    try:
        for token in tokenize.tokenize(io.BytesIO(source).readline):
            if tokenize.tok_name[token.type] in _DATA_TOKENS:
                parts.append(token.string.encode("utf-8", "surrogatepass"))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise TrainPyRefused(f"train.py does not tokenize: {str(exc).splitlines()[0][:120]}") from None
    return len(zlib.compress(b"\n".join(parts), 9))


def check_train_py(source: bytes, max_bytes: int = MAX_BYTES, max_embedded: int = MAX_EMBEDDED_BYTES) -> None:
    """Raise TrainPyRefused with a one-line reason when `source` may not run."""
    if len(source) > max_bytes:
        raise TrainPyRefused(
            f"train.py is {len(source)} bytes, over the {max_bytes}-byte cap: keep it "
            "one readable script (data belongs to the evaluator, not in train.py)"
        )
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainPyRefused(f"train.py is not UTF-8 text (byte {exc.start})") from None
    try:
        tree = ast.parse(text, filename="train.py")
        compile(tree, "train.py", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise TrainPyRefused(f"train.py does not compile: {exc.msg} (line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise TrainPyRefused(f"train.py does not compile: {type(exc).__name__}") from None
    embedded = embedded_bytes(source)
    if embedded > max_embedded:
        raise TrainPyRefused(
            f"train.py carries {embedded} bytes of embedded data (its literals and comments, compressed), "
            f"over the {max_embedded}-byte cap: no data tables or text blobs in train.py"
        )
