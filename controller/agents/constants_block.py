"""The constants block of train.py: read its tunable numbers, rewrite them in place.

A constant is a module-level (top-level statement, not inside `if`/`def`) assignment to one
ALL-CAPS name (`[A-Z][A-Z0-9_]*`, e.g. `MATRIX_LR = 0.02`, also `LR: float = 0.02`) whose value is
- an int, float or bool literal, optionally signed (`-1`, `-0.5`), or
- a power of two int literals, `B**E` (as in `TOTAL_BATCH_TOKENS = 2**19`), with 2 <= B <= 1024
  and 0 <= E <= 64, so reading a hostile file can never compute a huge number.
Anything else (`PROFILE = context.profile`, `X = 2 if CUDA else 0`, tuples, strings) is not a
constant. A name assigned more than once at the top level is left out (which value counts would
be ambiguous).

Rewriting replaces only the source span of each changed value: comments, spacing, the order of
lines and everything else stay byte-identical. New values keep the style of the old ones where
it makes sense: `2**19` -> `2**20` when the new value is a power of the same base, `524_288` keeps
its digit grouping, `3e-4` stays in exponent form.

Parsing uses `ast` only; nothing in the file is executed.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Value = int | float | bool
Kind = Literal["int", "float", "bool"]

CONSTANT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
MAX_POW_BASE = 1024
MAX_POW_EXPONENT = 64
_NEWLINE = re.compile(r"\r\n|\r|\n")


class ConstantsError(ValueError):
    """A rewrite that cannot be done (unknown name, wrong type, unparsable source)."""


@dataclass(frozen=True)
class Constant:
    name: str
    value: Value
    kind: Kind
    text: str  # the value's source text, e.g. "2**19" or "0.02"
    start: int  # character offsets of the value in the source: source[start:end] == text
    end: int
    line: int  # 1-based line of the assignment
    pow_base: int | None = None  # set when written as B**E


def parse_constants(source: str) -> dict[str, Constant]:
    """The constants of a train.py source, by name, in source order."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConstantsError(f"train.py does not parse: line {exc.lineno}: {exc.msg}") from None
    line_starts = _line_starts(source)
    found: list[Constant] = []
    names: Counter[str] = Counter()
    for stmt in tree.body:
        for name in _assigned_names(stmt):
            names[name] += 1
        target, value_node = _single_target(stmt)
        if target is None or value_node is None or not CONSTANT_NAME.match(target):
            continue
        literal = _literal(value_node)
        if literal is None:
            continue
        value, kind, pow_base = literal
        start = _offset(source, line_starts, value_node.lineno, value_node.col_offset)
        end = _offset(source, line_starts, value_node.end_lineno or value_node.lineno, value_node.end_col_offset or 0)
        found.append(Constant(target, value, kind, source[start:end], start, end, stmt.lineno, pow_base))
    return {c.name: c for c in found if names[c.name] == 1}


def constant_values(source: str) -> dict[str, Value]:
    return {name: c.value for name, c in parse_constants(source).items()}


def rewrite_constants(source: str, new_values: Mapping[str, Value]) -> str:
    """`source` with the named constants set to new values; unchanged values keep their text."""
    constants = parse_constants(source)
    unknown = sorted(set(new_values) - set(constants))
    if unknown:
        raise ConstantsError(f"not constants of train.py: {', '.join(unknown)}")
    edits: list[tuple[int, int, str]] = []
    for name, value in new_values.items():
        const = constants[name]
        checked = _checked_value(const, value)
        if checked == const.value and type(checked) is type(const.value):
            continue
        edits.append((const.start, const.end, format_value(const, checked)))
    out = source
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def format_value(const: Constant, value: Value) -> str:
    """Source text for `value` in the style of `const`'s current text."""
    if const.kind == "bool":
        return "True" if value else "False"
    if const.kind == "int":
        return _format_int(const, int(value))
    return _format_float(const, float(value))


# --- parsing helpers -------------------------------------------------------------------------


def _assigned_names(stmt: ast.stmt) -> list[str]:
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    names: list[str] = []
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.append(node.id)
    return names


def _single_target(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def _literal(node: ast.expr) -> tuple[Value, Kind, int | None] | None:
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            return v, "bool", None
        if isinstance(v, int):
            return v, "int", None
        if isinstance(v, float) and math.isfinite(v):
            return v, "float", None
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _literal(node.operand)
        if inner is None or inner[1] == "bool" or inner[2] is not None:
            return None
        value = -inner[0] if isinstance(node.op, ast.USub) else inner[0]
        return value, inner[1], None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exp = node.left, node.right
        if not (_is_int_literal(base) and _is_int_literal(exp)):
            return None
        b, e = base.value, exp.value  # type: ignore[attr-defined]
        if 2 <= b <= MAX_POW_BASE and 0 <= e <= MAX_POW_EXPONENT:
            return b**e, "int", b
    return None


def _is_int_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _line_starts(source: str) -> list[int]:
    """Character offset where each line begins (ast's line numbering: \\n, \\r\\n and \\r end lines)."""
    return [0] + [m.end() for m in _NEWLINE.finditer(source)]


def _offset(source: str, line_starts: list[int], lineno: int, col_utf8: int) -> int:
    """Character offset of an ast position (1-based line, UTF-8 byte column)."""
    start = line_starts[lineno - 1]
    end = line_starts[lineno] if lineno < len(line_starts) else len(source)
    line = source[start:end]
    return start + len(line.encode("utf-8")[:col_utf8].decode("utf-8", errors="strict"))


# --- formatting helpers ----------------------------------------------------------------------


def _checked_value(const: Constant, value: Value) -> Value:
    if const.kind == "bool":
        if not isinstance(value, bool):
            raise ConstantsError(f"{const.name} is a bool; got {value!r}")
        return value
    if isinstance(value, bool):
        raise ConstantsError(f"{const.name} is a number; got {value!r}")
    if const.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise ConstantsError(f"{const.name} is an int; got {value!r}")
            value = int(value)
        return int(value)
    if not math.isfinite(float(value)):
        raise ConstantsError(f"{const.name} must be finite; got {value!r}")
    return float(value)


def _format_int(const: Constant, value: int) -> str:
    base = const.pow_base
    if base is not None and value > 0:
        exp = round(math.log(value, base))
        if base**exp == value:
            spaced = " ** " in const.text
            return f"{base} ** {exp}" if spaced else f"{base}**{exp}"
    if "_" in const.text:
        return f"{value:_}"
    return str(value)


def _format_float(const: Constant, value: float) -> str:
    if "e" in const.text.lower():
        for digits in range(17):  # the shortest mantissa that reads back as the same float
            text = f"{value:.{digits}e}"
            if float(text) == value:
                break
        mantissa, exp = text.split("e")
        return f"{mantissa}e{int(exp)}"
    text = repr(value)
    if "e" in text or "inf" in text or "nan" in text:
        return text
    if "." not in text:
        text += ".0"
    return text
