"""Refuse a torch.export program (models/model.json of a .pt2) whose text would make torch run arbitrary code.

Two strings of the serialized graph are turned into Python objects by torch.export.load:

- every symbolic-shape expression ("expr_str") goes through `sympy.sympify`, which `eval`s it: an
  expression such as `__import__('os').system(…)` runs while the archive loads;
- every node "target" is resolved by walking attributes from the `torch`, `operator` or `math` module
  (`torch.os.system` is a valid walk), and the node calls it when the model runs.

Names are a third: parameter, buffer and module paths become attribute names in the Python source torch.fx
generates, where a part that is not an identifier is written as `getattr(self, "part")` without escaping.

So all three are checked against an allow-list before loading:

- an expression may only hold numbers, quoted names, `( ) , = + - * /` and the identifiers sympy's
  `srepr` writes (Symbol, Integer, Mul, …, torch's FloorDiv and friends, positive=True, …) or symbol names
  like s77: no attribute access, no subscripts, no double underscores, so eval can only build sympy
  expressions;
- a target must be an ATen or prims operator overload (`torch.ops.aten.conv2d.default`), one of a few
  arithmetic functions of `operator`/`math`, or one of torch's symbolic-shape helpers (`torch.sym_max`, …);
- a name (any key ending in "name", and "fqn") is a dotted path of letters, digits, '_' and '-'.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_EXPRESSION_TOKEN = re.compile(
    r"\s+|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|'[A-Za-z0-9_.+-]*'|[(),=+\-*/]|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
)
_SYMPY_WORDS = """
    Symbol Integer Rational Float Mul Add Pow Max Min Mod Abs Eq Ne Lt Le Gt Ge And Or Not Piecewise
    StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality BooleanTrue BooleanFalse
    Infinity NegativeInfinity oo zoo nan floor ceiling true false True False
    positive negative integer nonnegative nonpositive real finite precision evaluate
    FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
    PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt
    RoundToInt RoundDecimal ToFloat Identity OpaqueUnaryFn_sqrt OpaqueUnaryFn_log2 BitwiseFn_bitwise_and
    BitwiseFn_bitwise_or BitwiseFn_bitwise_xor
"""
_OPERATOR_WORDS = "add sub mul truediv floordiv mod pow neg pos abs getitem eq ne lt le gt ge and_ or_ xor not_ invert"
_MATH_WORDS = "ceil floor trunc sqrt exp log log2 log10 fabs isfinite isinf isnan"
_TORCH_WORDS = "sym_float sym_int sym_max sym_min sym_not sym_ite sym_sqrt sym_sum _assert _sym_sqrt"

_SYMPY_NAMES = frozenset(_SYMPY_WORDS.split())
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")
_NAME = re.compile(r"[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
_ATEN_TARGET = re.compile(r"torch\.ops\.(?:aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
_OTHER_TARGETS = frozenset(
    [f"_operator.{name}" for name in _OPERATOR_WORDS.split()]
    + [f"math.{name}" for name in _MATH_WORDS.split()]
    + [f"torch.{name}" for name in _TORCH_WORDS.split()]
)


def program_refusal(model_json: bytes) -> str | None:
    """Why models/model.json cannot be loaded safely, or None when every expression and target is allowed."""
    try:
        program = json.loads(model_json)
    except (ValueError, UnicodeDecodeError):
        return "models/model.json is not valid JSON"
    for key, text in _strings(program):
        if (key == "fqn" or key.endswith("name")) and not safe_name(text):
            return f"the name {text[:80]!r} ({key}) is not a dotted path of letters, digits, '_' and '-'"
        if key == "expr_str" and not _safe_expression(text):
            return f"a shape expression {text[:80]!r} is not a plain sympy expression (sympify would eval it)"
        if key == "target" and not _safe_target(text):
            return f"a graph node calls {text[:80]!r}, which is not an ATen/prims operator or allowed helper"
    return None


def _strings(value: Any) -> Iterator[tuple[str, str]]:
    """Every (key, string) pair for the keys checked here, at any depth (nested graphs too)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and (key in ("expr_str", "target", "fqn") or key.endswith("name")):
                yield key, item
            else:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def safe_name(text: str) -> bool:
    """True for a (possibly empty) dotted path of letters, digits, '_' and '-': torch.fx writes such names
    into generated Python source (`getattr(self, "…")` for a part that is not an identifier) unescaped."""
    return _NAME.fullmatch(text) is not None


def _safe_expression(text: str) -> bool:
    """True when `text` is made only of allowed tokens (the whole string, no double underscores)."""
    if "__" in text:
        return False
    position = 0
    while position < len(text):
        token = _EXPRESSION_TOKEN.match(text, position)
        if token is None:
            return False
        name = token.group("name")
        if name is not None and name not in _SYMPY_NAMES and not _SYMBOL_NAME.fullmatch(name):
            return False
        position = token.end()
    return True


def _safe_target(text: str) -> bool:
    if "__" in text or "from_file" in text:  # aten::from_file reads any file into a tensor
        return False
    return text in _OTHER_TARGETS or _ATEN_TARGET.fullmatch(text) is not None
