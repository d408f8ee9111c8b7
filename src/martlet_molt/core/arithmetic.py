"""Arithmetic without `eval`: the calculator tool's engine.

Only numbers, `+ - * / // % **` and parentheses are walked; every other piece of Python
syntax is refused by name. Input length, exponents and result size are bounded so that no
expression a model sends can exhaust CPU or memory. Written by hand on `ast` rather than with
an expression library because the bounds on powers and results are the point, and they are a
few lines here.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

_MAX_EXPRESSION_CHARS = 500
_MAX_EXPONENT = 1000
_MAX_RESULT_DIGITS = 1000
_MAX_ABS_INT = 10**_MAX_RESULT_DIGITS
# An int power with (base.bit_length() - 1) * exponent above this certainly exceeds
# _MAX_ABS_INT, so it is refused before it is computed; below it the power is cheap.
_MAX_POWER_BITS = math.ceil(_MAX_RESULT_DIGITS * math.log2(10))

Number = int | float

_BINARY_OPS: dict[type[ast.operator], Callable[[Any, Any], object]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], object]] = {
    ast.UAdd: lambda a: +a,
    ast.USub: lambda a: -a,
}
_OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Not: "not",
}
_REJECTED_SYNTAX: dict[type[ast.AST], str] = {
    ast.Name: "names are not allowed",
    ast.Call: "function calls are not allowed",
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Compare: "comparisons are not allowed",
    ast.BoolOp: "boolean operators are not allowed",
    ast.Lambda: "lambdas are not allowed",
}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


def evaluate_arithmetic(expression: str) -> Number:
    """Evaluate plain arithmetic without ``eval``.

    Allows int and float literals, unary ``+``/``-``, binary ``+ - * / // % **``
    and parentheses; everything else raises ``CalculatorError``. Input length,
    exponents and result size are bounded so no expression can exhaust CPU or memory.
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is longer than {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise CalculatorError("not a valid arithmetic expression") from exc
    except (RecursionError, MemoryError) as exc:
        raise CalculatorError("expression is too deeply nested") from exc
    try:
        return _evaluate(tree.body)
    except RecursionError as exc:
        raise CalculatorError("expression is too deeply nested") from exc


def _evaluate(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CalculatorError(
                f"only int and float numbers are allowed, got {type(value).__name__} constant"
            )
        return _checked(value)
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY_OPS.get(type(node.op))
        if unary is None:
            raise CalculatorError(f"operator {_operator_symbol(node.op)!r} is not allowed")
        return _checked(unary(_evaluate(node.operand)))
    if isinstance(node, ast.BinOp):
        binary = _BINARY_OPS.get(type(node.op))
        if binary is None:
            raise CalculatorError(f"operator {_operator_symbol(node.op)!r} is not allowed")
        left = _evaluate(node.left)
        right = _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            result: object = binary(left, right)
        except OverflowError as exc:
            raise CalculatorError("result is too large") from exc
        return _checked(result)
    reason = _REJECTED_SYNTAX.get(type(node), f"{type(node).__name__} is not allowed")
    raise CalculatorError(f"unsupported syntax: {reason}")


def _operator_symbol(op: ast.AST) -> str:
    return _OPERATOR_SYMBOLS.get(type(op), type(op).__name__)


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > _MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent!r} is too large (limit ±{_MAX_EXPONENT})")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and (base.bit_length() - 1) * exponent > _MAX_POWER_BITS
    ):
        raise CalculatorError("result is too large")


def _checked(value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError("result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is too large")
    if isinstance(value, int) and abs(value) >= _MAX_ABS_INT:
        raise CalculatorError(f"result has more than {_MAX_RESULT_DIGITS} digits")
    return value
