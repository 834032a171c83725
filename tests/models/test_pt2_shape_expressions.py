"""Shape expressions of a .pt2 are sympify-evaluated by torch.export.load: besides code (tests in
test_pt2_archive_safety.py), an expression can cost unbounded time and memory — `10**10**8` is a valid
sympy expression whose evaluation never ends. The allow-list bounds what an expression may be."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

from bnfold.models.pt2.expression import expression_refusal
from tests.bounded_run import run_bounded
from tests.models.test_pt2_archive_safety import Entries, _name, _plain_archive, _rewrite

BNFOLD = str(Path(sys.executable).parent / "bnfold")
DEADLINE_S = 120.0  # importing torch and refusing the archive take a few seconds; the old code never returned
RSS_LIMIT = 1536 * 2**20  # torch + a tiny model stay well below; the old code passed 477 MB in 15 s and climbed


def _first_expression_set_to(expression: str) -> object:
    def edit(entries: Entries) -> None:
        name = _name(entries, "models/model.json")
        program = json.loads(entries[name])
        _set_first_expr_str(program, expression)
        entries[name] = json.dumps(program).encode()

    return edit


def _set_first_expr_str(value: object, expression: str) -> bool:
    if isinstance(value, dict):
        if isinstance(value.get("expr_str"), str):
            value["expr_str"] = expression
            return True
        return any(_set_first_expr_str(item, expression) for item in value.values())
    if isinstance(value, list):
        return any(_set_first_expr_str(item, expression) for item in value)
    return False


def test_a_power_tower_in_a_shape_expression_is_refused_quickly_by_the_real_cli(tmp_path: Path) -> None:
    plain, evil, repository = tmp_path / "plain.pt2", tmp_path / "tower.pt2", tmp_path / "repo"
    _plain_archive(plain)
    _rewrite(plain, evil, _first_expression_set_to("10**10**8"))  # type: ignore[arg-type]
    ran = run_bounded([BNFOLD, "fold-and-export", "--model", str(evil), "--out", str(repository)], DEADLINE_S)
    peak_mib = ran.peak_rss_bytes / 2**20
    assert ran.finished, f"fold-and-export still running after {ran.seconds:.0f} s (RSS peak {peak_mib:.0f} MiB)"
    assert ran.peak_rss_bytes < RSS_LIMIT, f"RSS peak {peak_mib:.0f} MiB"
    assert ran.code == 1 and ran.err.count("\n") == 1 and "Traceback" not in ran.err, ran.err
    assert ran.err.startswith(f"bnfold fold-and-export: {evil}: a shape expression '10**10**8' ")
    assert "exponent" in ran.err and "re-export a plain nn.Module with torch.export.save" in ran.err
    assert not repository.exists() or not any(repository.iterdir())


TOWER = "Pow(Integer(10), Pow(Integer(10), Integer(8)))"
S = "Symbol('s77', positive=True, integer=True)"
REFUSED = {
    "10**10**8": "the exponent 10**8 is not an integer literal from -8 to 8",
    TOWER: "the exponent Pow(Integer(10), Integer(8)) is not an integer literal from -8 to 8",
    "Integer(2)**Integer(100000000)": "the exponent Integer(100000000) is not an integer literal from -8 to 8",
    f"Pow({S}, {S})": f"the exponent {S} is not an integer literal from -8 to 8",
    "LShift(Integer(1), Integer(100000000))": "the shift Integer(100000000) is not an integer literal from 0 to 64",
    "((((Integer(2)**8)**8)**8)**8)**8": "its integers could reach 2**65536 (at most 2**4096)",
    "Mul(" + ", ".join(["Integer(9223372036854775807)"] * 80) + ")": "its integers could reach 2**5040",
    "Integer(" + "9" * 30 + ")": f"the integer literal {'9' * 30} is larger than 2**63",
    "factorial(Integer(100000))": "it calls factorial, which is not allowed",
    "Symbol('s77').__class__": "it uses an attribute, which is not allowed",
    "Float('1.5', precision=100000000)": "the keyword precision=100000000 is not allowed",
    "x" * 5000: "it is 5000 characters long (at most 4096)",
    "Abs(" * 80 + "s1" + ")" * 80: "it nests deeper than 60 levels",
    "Integer(10)!": "it is not a Python-syntax expression",
}
ALLOWED = [
    f"Mul(Integer(2), {S})",
    f"FloorDiv(Add({S}, Integer(-1)), Integer(2))",
    f"Max(Integer(1), Min({S}, Integer(9223372036854775807)))",
    f"Mul({S}, Pow(Add({S}, Integer(1)), Integer(-1)))",
    f"Pow({S}, Integer(2))",
    "ceiling(s0 / 2) + floor(s1 // 3) % 4 - Mod(s0, 8)",
    f"Eq(Mod({S}, Integer(2)), Integer(0))",
    "Float('1.5', precision=53)",
    "Rational(1, 2)",
]


@pytest.mark.parametrize(("expression", "reason"), REFUSED.items(), ids=range(len(REFUSED)))
def test_unbounded_or_unknown_expressions_are_refused_with_the_reason(expression: str, reason: str) -> None:
    refusal = expression_refusal(expression)
    assert refusal is not None and "\n" not in refusal
    assert reason in refusal, refusal
    assert "allowed: symbols (s0), integer literals up to 2**63" in refusal
    assert refusal.startswith("a shape expression ")
    shown = ast.literal_eval(refusal[len("a shape expression ") : refusal.index(" is not allowed: ")])
    assert len(shown) <= 82 and expression.startswith(shown.removesuffix(" …"))


@pytest.mark.parametrize("expression", ALLOWED)
def test_shape_arithmetic_that_torch_writes_is_allowed(expression: str) -> None:
    assert expression_refusal(expression) is None


def test_every_expression_of_a_real_export_is_allowed(tmp_path: Path) -> None:
    """A dynamic-batch export with shape arithmetic: each of its expressions passes (and is non-trivial)."""
    from tests.models.test_pt2_archive_safety import _Reshapes

    archive = tmp_path / "reshapes.pt2"
    program = torch.export.export(_Reshapes(), (torch.randn(3, 8),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(program, archive)
    import zipfile

    text = zipfile.ZipFile(archive).read("reshapes/models/model.json")
    expressions: list[str] = []
    _collect(json.loads(text), expressions)
    assert any(e.startswith("Mul(Integer(2), Symbol(") for e in expressions), expressions
    assert [e for e in expressions if expression_refusal(e) is not None] == []


def _collect(value: object, found: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "expr_str" and isinstance(item, str):
                found.append(item)
            else:
                _collect(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect(item, found)
