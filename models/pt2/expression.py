"""Bound what a .pt2 shape expression may compute before torch hands it to `sympy.sympify`.

sympify evaluates its text: besides code (refused by models/pt2_program.py's token check), an expression can
cost unbounded time and memory — `10**10**8` is valid sympy and never finishes. So an expression is parsed
with `ast` (which evaluates nothing) and must fit this grammar:

    expression := symbol | integer | float | constant | -expression | expression OP expression | call
    OP         := + - * / // %   and  **  whose exponent is an integer literal k, -8 ≤ k ≤ 8
    call       := FUNCTION(expression, …, keyword=True|False, …)   FUNCTION from the lists below
    symbol     := s0, u3, … (letters then digits), or Symbol('s0', positive=True, …)
    integer    := a literal n with |n| ≤ 2**63 (torch's shapes are int64), or Integer(n)

Pow/PowByNatural/FloatPow take the same bounded exponent, LShift/RShift a literal shift 0 ≤ k ≤ 64. On top,
an upper bound on the size of every number sympy computes from the literals is propagated through the tree
(log2 magnitudes: a product adds them, a sum adds one per doubling of its terms, `x**k` multiplies by |k|,
a symbol counts 0) and must stay ≤ 2**4096; the text is at most 4096 characters and 60 calls deep.
"""

from __future__ import annotations

import ast
import re

MAX_LENGTH, MAX_DEPTH, MAX_EXPONENT, MAX_SHIFT, MAX_BITS = 4096, 60, 8, 64, 4096
MAX_LITERAL = 2**63


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_ADDITIVE = _words("Add Max Min")
_FUNCTIONS = _ADDITIVE | _words("""
    Mul Mod Abs floor ceiling FloorDiv CeilDiv CleanDiv ModularIndexing PythonMod IntTrueDiv FloatTrueDiv
    TruncToInt TruncToFloat CeilToInt FloorToInt RoundToInt ToFloat Identity Where Piecewise
    Eq Ne Lt Le Gt Ge StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not
    OpaqueUnaryFn_sqrt OpaqueUnaryFn_log2 BitwiseFn_bitwise_and BitwiseFn_bitwise_or BitwiseFn_bitwise_xor
    IsNonOverlappingAndDenseIndicator Integer Rational Float Symbol
    """)
_POWERS = _words("Pow PowByNatural FloatPow")
_SHIFTS = _words("LShift RShift")
_CONSTANTS = _words("oo zoo nan true false Infinity NegativeInfinity BooleanTrue BooleanFalse")
_FLAGS = _words("positive negative integer nonnegative nonpositive real finite zero nonzero even odd rational evaluate")
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,40}(?:\.[0-9]{0,40})?(?:[eE][+-]?[0-9]{1,3})?")
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}
_NOT_ALLOWED = {
    ast.Attribute: "an attribute",
    ast.Subscript: "a subscript",
    ast.BoolOp: "and/or",
    ast.Compare: "a comparison",
    ast.Lambda: "a lambda",
    ast.Starred: "a starred argument",
}
ALLOWED = (
    "symbols (s0), integer literals up to 2**63, + - * / // %, ** with an integer exponent from -8 to 8, "
    "Max, Min, floor, ceiling, Mod, FloorDiv and sympy's other integer shape functions, at most "
    f"{MAX_LENGTH} characters"
)


class _Refused(Exception):
    """Why the expression is refused (one clause)."""


def expression_refusal(text: str) -> str | None:
    """None when `text` fits the grammar; otherwise one line naming the expression, why, and what is allowed."""
    try:
        _check(text)
    except _Refused as reason:
        return f"a shape expression {shorten(text)!r} is not allowed: {reason}; allowed: {ALLOWED}"
    return None


def shorten(text: str, width: int = 80) -> str:
    """`text`, cut to at most `width` characters at the last word boundary, marked with ' …'."""
    if len(text) <= width:
        return text
    cut = text[:width]
    boundary = max(cut.rfind(mark) for mark in " ,()+-*/%")
    return (cut[: boundary + 1] if boundary >= width // 2 else cut).rstrip() + " …"


def _check(text: str) -> None:
    if len(text) > MAX_LENGTH:
        raise _Refused(f"it is {len(text)} characters long (at most {MAX_LENGTH})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Refused("it is not a Python-syntax expression") from None
    bits = _Walker(text.strip()).bits(tree.body, 0)
    if bits > MAX_BITS:
        raise _Refused(f"its integers could reach 2**{bits} (at most 2**{MAX_BITS})")


class _Walker:
    """Checks each node against the grammar; `bits` is an upper bound on log2 of the numbers it yields."""

    def __init__(self, source: str) -> None:
        self.source = source

    def text(self, node: ast.AST) -> str:
        return shorten(ast.get_source_segment(self.source, node) or ast.unparse(node), 60)

    def bits(self, node: ast.AST, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _Refused(f"it nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            return self.bits(node.operand, depth + 1)
        if isinstance(node, ast.Tuple):  # Piecewise((expression, condition), …)
            return sum(self.bits(item, depth + 1) for item in node.elts)
        if isinstance(node, ast.BinOp):
            return self._binary(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        raise _Refused(f"it uses {_NOT_ALLOWED.get(type(node), type(node).__name__)}, which is not allowed")

    def _constant(self, node: ast.Constant) -> int:
        value = node.value
        if isinstance(value, bool):
            return 1
        if isinstance(value, int):
            if abs(value) > MAX_LITERAL:
                raise _Refused(f"the integer literal {self.text(node)} is larger than 2**63")
            return abs(value).bit_length()
        if isinstance(value, float):
            return 0  # a float has bounded precision; its arithmetic costs the same whatever its size
        raise _Refused(f"the literal {self.text(node)} is not a number")

    def _name(self, node: ast.Name) -> int:
        if node.id in _CONSTANTS or _SYMBOL_NAME.fullmatch(node.id):
            return 0
        raise _Refused(f"the name {node.id} is not a symbol (s0, u3, …) or a sympy constant")

    def _binary(self, node: ast.BinOp, depth: int) -> int:
        if isinstance(node.op, ast.Pow):
            return self.bits(node.left, depth + 1) * self._exponent(node.right)
        if type(node.op) not in _BINARY:
            raise _Refused(f"it uses the operator {type(node.op).__name__}, which is not allowed")
        left, right = self.bits(node.left, depth + 1), self.bits(node.right, depth + 1)
        return max(left, right) + 1 if isinstance(node.op, ast.Add | ast.Sub) else left + right

    def _call(self, node: ast.Call, depth: int) -> int:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name is None:
            raise _Refused(f"it uses {_NOT_ALLOWED.get(type(node.func), 'a computed function')}, which is not allowed")
        if name not in _FUNCTIONS | _POWERS | _SHIFTS:
            raise _Refused(f"it calls {name}, which is not allowed")
        for keyword in node.keywords:
            self._keyword(name, keyword)
        if name == "Symbol":
            return self._symbol(node)
        if name == "Float":
            return self._float(node)
        if name in _POWERS | _SHIFTS:
            if len(node.args) != 2:
                raise _Refused(f"{name} takes 2 arguments")
            base = self.bits(node.args[0], depth + 1)
            if name in _POWERS:
                return base * self._exponent(node.args[1])
            return base + self._shift(node.args[1]) if name == "LShift" else base
        sizes = [self.bits(argument, depth + 1) for argument in node.args]
        if name in _ADDITIVE:
            return max(sizes, default=0) + len(sizes).bit_length()
        return sum(sizes)

    def _keyword(self, function: str, keyword: ast.keyword) -> None:
        value = keyword.value
        if keyword.arg in _FLAGS and isinstance(value, ast.Constant) and isinstance(value.value, bool):
            return
        precision = isinstance(value, ast.Constant) and type(value.value) is int and 1 <= value.value <= 113
        if function == "Float" and keyword.arg == "precision" and precision:
            return
        raise _Refused(f"the keyword {keyword.arg}={self.text(value)} is not allowed")

    def _symbol(self, node: ast.Call) -> int:
        name = node.args[0] if len(node.args) == 1 else None
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str) and _SYMBOL_NAME.fullmatch(name.value)):
            raise _Refused(f"{self.text(node)} does not name a symbol like 's0'")
        return 0

    def _float(self, node: ast.Call) -> int:
        value = node.args[0] if len(node.args) == 1 else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str) and _DECIMAL.fullmatch(value.value):
            return 0
        if isinstance(value, ast.Constant) and type(value.value) in (int, float):
            return self._constant(value)
        raise _Refused(f"{self.text(node)} is not a decimal Float")

    def _exponent(self, node: ast.AST) -> int:
        value = _integer_literal(node)
        if value is None or abs(value) > MAX_EXPONENT:
            raise _Refused(f"the exponent {self.text(node)} is not an integer literal from -8 to 8")
        return max(1, abs(value))

    def _shift(self, node: ast.AST) -> int:
        value = _integer_literal(node)
        if value is None or not 0 <= value <= MAX_SHIFT:
            raise _Refused(f"the shift {self.text(node)} is not an integer literal from 0 to {MAX_SHIFT}")
        return value


def _integer_literal(node: ast.AST) -> int | None:
    """The value of `k`, `-k` or `Integer(k)`/`Integer(-k)` for an int literal k; None for anything else."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Integer":
        if len(node.args) != 1 or node.keywords:
            return None
        node = node.args[0]
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sign * node.value
    return None
