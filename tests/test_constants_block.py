"""The constants block of train.py: parse the ALL-CAPS literal constants, rewrite only their values."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from controller.agents.constants_block import ConstantsError, constant_values, parse_constants, rewrite_constants

SAMPLE = '''\
"""A train.py with every kind of line the parser must tell apart."""
import math

DEPTH = 8  # layers
LR = 0.02  # learning rate
WD: float = 3e-4  # annotated, exponent form
BATCH_TOKENS = 2**19  # power form
WIDE_BATCH = 2 ** 10
BIG = 524_288
USE_BIAS = False  # a bool
OFFSET = -3
SHIFT = -0.5
UNIT: "réel" = 0.25  # non-ASCII before the value on the same line
lower_case = 5
NAME = "gpt"
DERIVED = DEPTH * 64
COND = 2 if math.pi > 3 else 0
TWICE = 1
TWICE = 2
A, B = 1, 2
HUGE = 2**100000
NOT_POW = 4096**2
GIGA = 1000**3
if True:
    NESTED = 7


def f():
    INSIDE = 3
    return INSIDE
'''


def test_parses_only_top_level_all_caps_literals() -> None:
    values = constant_values(SAMPLE)
    assert values == {
        "DEPTH": 8,
        "LR": 0.02,
        "WD": 3e-4,
        "BATCH_TOKENS": 2**19,
        "WIDE_BATCH": 2**10,
        "BIG": 524_288,
        "USE_BIAS": False,
        "OFFSET": -3,
        "SHIFT": -0.5,
        "UNIT": 0.25,
        "GIGA": 1000**3,
    }
    kinds = {n: c.kind for n, c in parse_constants(SAMPLE).items()}
    assert kinds["USE_BIAS"] == "bool" and kinds["DEPTH"] == "int" and kinds["LR"] == "float"


def test_value_spans_point_at_the_literal_text() -> None:
    for const in parse_constants(SAMPLE).values():
        assert SAMPLE[const.start : const.end] == const.text
    assert parse_constants(SAMPLE)["BATCH_TOKENS"].text == "2**19"
    assert parse_constants(SAMPLE)["UNIT"].text == "0.25"


def test_rewrite_with_no_change_is_byte_identical() -> None:
    assert rewrite_constants(SAMPLE, {}) == SAMPLE
    assert rewrite_constants(SAMPLE, constant_values(SAMPLE)) == SAMPLE


def test_rewrite_touches_only_the_literal_spans() -> None:
    changes = {"DEPTH": 12, "LR": 0.0312, "UNIT": 0.5, "USE_BIAS": True}
    out = rewrite_constants(SAMPLE, changes)
    consts = parse_constants(SAMPLE)
    expected = SAMPLE
    for name, text in sorted(
        ((n, {"DEPTH": "12", "LR": "0.0312", "UNIT": "0.5", "USE_BIAS": "True"}[n]) for n in changes),
        key=lambda item: consts[item[0]].start,
        reverse=True,
    ):
        c = consts[name]
        expected = expected[: c.start] + text + expected[c.end :]
    assert out == expected
    assert constant_values(out) == {**constant_values(SAMPLE), **changes}
    assert 'UNIT: "réel" = 0.5  # non-ASCII before the value on the same line' in out


def test_rewrite_keeps_the_style_of_each_literal() -> None:
    out = rewrite_constants(SAMPLE, {"BATCH_TOKENS": 2**20, "WIDE_BATCH": 2**12, "BIG": 1_048_576, "WD": 3.12e-4})
    assert "BATCH_TOKENS = 2**20  # power form" in out
    assert "WIDE_BATCH = 2 ** 12\n" in out
    assert "BIG = 1_048_576\n" in out
    assert "WD: float = 3.12e-4  #" in out
    assert constant_values(out)["WD"] == 3.12e-4
    plain = rewrite_constants(SAMPLE, {"BATCH_TOKENS": 3000, "LR": 1, "OFFSET": 4, "SHIFT": 0.25})
    assert "BATCH_TOKENS = 3000  # power form" in plain
    assert "LR = 1.0  # learning rate" in plain  # a float stays a float literal
    assert "OFFSET = 4\n" in plain and "SHIFT = 0.25\n" in plain


def test_rewrite_refuses_unknown_names_and_wrong_types() -> None:
    with pytest.raises(ConstantsError, match="lower_case"):
        rewrite_constants(SAMPLE, {"lower_case": 6})
    with pytest.raises(ConstantsError, match="NESTED"):
        rewrite_constants(SAMPLE, {"NESTED": 6})
    with pytest.raises(ConstantsError, match="bool"):
        rewrite_constants(SAMPLE, {"USE_BIAS": 1})
    with pytest.raises(ConstantsError, match="int"):
        rewrite_constants(SAMPLE, {"DEPTH": 2.5})
    with pytest.raises(ConstantsError, match="number"):
        rewrite_constants(SAMPLE, {"LR": True})
    with pytest.raises(ConstantsError, match="does not parse"):
        parse_constants("X = (\n")


def test_crlf_line_endings_survive_a_rewrite() -> None:
    source = "A = 1\r\nB = 0.5  # half\r\nC = True\r\n"
    out = rewrite_constants(source, {"B": 0.75, "C": False})
    assert out == "A = 1\r\nB = 0.75  # half\r\nC = False\r\n"


def test_random_rewrites_of_the_seed_train_py_round_trip(seed_train_py: Path) -> None:
    source = seed_train_py.read_text()
    consts = parse_constants(source)
    assert {"DEPTH", "MATRIX_LR", "TOTAL_BATCH_TOKENS"} <= set(consts)
    assert rewrite_constants(source, constant_values(source)) == source
    rng = random.Random(0)
    for _ in range(50):
        names = rng.sample(sorted(consts), rng.randint(1, 4))
        changes: dict[str, int | float | bool] = {}
        for name in names:
            value = consts[name].value
            if isinstance(value, bool):
                changes[name] = not value
            elif isinstance(value, int):
                changes[name] = value * rng.choice([2, 4]) if consts[name].pow_base else value + rng.randint(1, 9)
            else:
                changes[name] = round(value * rng.uniform(0.3, 3.0) + 0.001, 5)
        out = rewrite_constants(source, changes)
        assert constant_values(out) == {**constant_values(source), **changes}
        # with the changed values cut out, old and new files are the same text
        new_consts = parse_constants(out)
        assert _without(source, [consts[n] for n in changes]) == _without(out, [new_consts[n] for n in changes])


def _without(text: str, constants: list) -> str:
    for const in sorted(constants, key=lambda c: c.start, reverse=True):
        text = text[: const.start] + "<>" + text[const.end :]
    return text
