"""Range checks for the numeric fields of config dataclasses.

Every config dataclass checks its numbers where it is built (``__post_init__``), so the CLI and the
Python API get the same one clear :class:`~kshot.errors.KShotError` naming the option (as its
``--flag``) and the range it allows, before anything is trained or written::

    @dataclass
    class MyConfig:
        lr: float = 1e-3
        steps: int = 5

        def __post_init__(self) -> None:
            check_ranges(self, lr=Range(0, None, low_open=True), steps=Range(1))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from kshot.errors import KShotError


@dataclass(frozen=True)
class Range:
    """Allowed values ``low ≤ x ≤ high`` (``None``: unbounded); ``*_open`` makes a bound strict."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None
                    and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "any number"


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, high_open=True)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ranges(config: Any, **ranges: Range) -> None:
    """Raise one :class:`KShotError` naming ``--option`` and its range for the first bad field.

    A field that is a tuple is checked element by element; ``bool`` is not a number here.
    """
    for name, allowed in ranges.items():
        value = getattr(config, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, bool) or not isinstance(item, numbers.Real):
                raise KShotError(f"{option_name(name)} must be a number {allowed.describe()}, "
                                 f"got {item!r}")
            if isinstance(item, float) and math.isnan(item) or not allowed.contains(item):
                raise KShotError(f"{option_name(name)} must be {allowed.describe()}, got {item!r}")


def check_count(name: str, value: Any, option: str, low: int = 1) -> None:
    """Raise one :class:`KShotError` unless ``value`` is an integer ``>= low`` (``bool`` is not):
    ``"{name} must be an integer >= {low}, got {value!r}; pass {option} {low} or more"``. For
    counts given as plain arguments rather than config fields (episodes, ways, threads)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise KShotError(f"{name} must be an integer >= {low}, got {value!r}; pass {option} {low} "
                         "or more")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise a :class:`KShotError` unless field ``name`` is one of ``choices``."""
    value = getattr(config, name)
    if value not in choices:
        raise KShotError(f"{option_name(name)} must be one of {', '.join(choices)}, got {value!r}")
