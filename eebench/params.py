"""Constraints on parameter values, declared beside the defaults by the plugin that owns them.

A plugin declares ``parameters`` (name → default; the default's type is the parameter's type) and,
beside it, ``constraints`` (name → a :class:`Constraint`). :func:`eebench.harness.config.check_params`
checks every given value against both before any data, weights or features are touched, and the
contract tests check that every default satisfies its own constraint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class Constraint:
    """A predicate on a value with a description of what is allowed (for the error line)."""

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Constraint):
    """A number in an interval: ``lo`` / ``hi`` (None: unbounded), each end open or closed.

    ``Range(0, open_lo=True)`` is (0, ∞); ``Range(0, 1, open_hi=True)`` is [0, 1).
    """

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.lo is not None and (value < self.lo or (self.open_lo and value == self.lo)):
            return False
        if self.hi is not None and (value > self.hi or (self.open_hi and value == self.hi)):
            return False
        return True

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"in {'(' if self.open_lo or self.lo is None else '['}{lo}, {hi}{')' if self.open_hi or self.hi is None else ']'}"


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of a fixed set of values."""

    choices: tuple[Any, ...]

    def ok(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)


@dataclass(frozen=True)
class Each(Constraint):
    """A list whose every element satisfies ``item`` (at least ``min_len`` of them)."""

    item: Constraint
    min_len: int = 1

    def ok(self, value: Any) -> bool:
        return isinstance(value, list) and len(value) >= self.min_len and all(self.item.ok(v) for v in value)

    def describe(self) -> str:
        return f"a list of at least {self.min_len} value(s), each {self.item.describe()}"


@dataclass(frozen=True)
class Optional(Constraint):
    """None, or a value satisfying ``inner``."""

    inner: Constraint

    def ok(self, value: Any) -> bool:
        return value is None or self.inner.ok(value)

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"


#: Shorthands.
POSITIVE = Range(0, open_lo=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, open_hi=True)              # [0, 1)
OPEN_UNIT = Range(0, 1, open_lo=True, open_hi=True)
MOMENTUM = Range(0, 1, open_hi=True)
