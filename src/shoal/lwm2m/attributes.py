"""LwM2M notification attributes (Core 1.1 §5.1.2, 1.2 §7.3) as Write-Attributes queries.

The server sends them as Uri-Query options (`?pmin=10&gt=20.5`) and reads them
back in Discover responses. A Write-Attributes that names an attribute without a
value removes it (`?pmin`); that is `UNSET` here, distinct from None (not
mentioned, left as it is). Validation follows the spec's MUST rules, the same ones
Leshan enforces: pmin <= pmax, epmin <= epmax, lt < gt and lt + 2*st < gt.
Which attribute may sit on which path (gt only on numeric resources...) needs the
object model and is checked by the caller.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Final, Literal


class InvalidAttributes(ValueError):
    """Attributes that are malformed or break the spec's consistency rules."""


class Unset(enum.Enum):
    """Marker for an attribute to remove: `to_query` emits its bare name."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET

IntAttr = int | Literal[Unset.UNSET] | None
FloatAttr = float | Literal[Unset.UNSET] | None

# Clients commonly keep periods in a signed 32-bit integer (Zephyr, Wakaama).
MAX_PERIOD = 2**31 - 1

_INT = re.compile(r"[0-9]{1,10}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")

_INT_NAMES: Final = frozenset({"pmin", "pmax", "epmin", "epmax", "hqmax"})
_BOOL_NAMES: Final = frozenset({"edge", "con"})
_FLOAT_NAMES: Final = frozenset({"gt", "lt", "st"})
# Query order: the order of the dataclass fields.
NAMES: Final = (
    "pmin",
    "pmax",
    "gt",
    "lt",
    "st",
    "epmin",
    "epmax",
    "edge",
    "con",
    "hqmax",
)


def _exact(x: float) -> Decimal:
    """The decimal a float was written as, so `lt + 2*st < gt` has no binary rounding."""
    return Decimal(repr(x))


def _format_float(x: float) -> str:
    """Shortest round-trip text, without exponent where it stays short (`20.5`, `0.00001`)."""
    text = repr(x)
    if "e" in text:
        positional = format(Decimal(text), "f")
        if len(positional) <= 32:
            text = positional
    if text.endswith(".0"):
        text = text[:-2]
    return text


@dataclass(frozen=True, slots=True)
class NotificationAttributes:
    """Notification attributes at one level (object, instance, resource, resource instance).

    None: not set / not mentioned. `UNSET`: remove it (Write-Attributes only).
    edge and con are 0 or 1; hqmax is a count; periods are seconds.
    """

    pmin: IntAttr = None
    pmax: IntAttr = None
    gt: FloatAttr = None
    lt: FloatAttr = None
    st: FloatAttr = None
    epmin: IntAttr = None
    epmax: IntAttr = None
    edge: IntAttr = None
    con: IntAttr = None
    hqmax: IntAttr = None

    def __post_init__(self) -> None:
        for name in NAMES:
            value = getattr(self, name)
            if value is None or value is UNSET:
                continue
            if name in _FLOAT_NAMES:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidAttributes(f"{name} must be a number, got {value!r}")
                value = float(value)
                if not math.isfinite(value):
                    raise InvalidAttributes(f"{name} must be finite, got {value!r}")
                if name == "st" and value < 0:
                    raise InvalidAttributes(f"st must not be negative, got {value!r}")
                object.__setattr__(self, name, value)
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InvalidAttributes(f"{name} must be an integer, got {value!r}")
                if name in _BOOL_NAMES and value not in (0, 1):
                    raise InvalidAttributes(f"{name} must be 0 or 1, got {value!r}")
                if not 0 <= value <= MAX_PERIOD:
                    raise InvalidAttributes(f"{name} out of range 0..{MAX_PERIOD}: {value!r}")
        pmin, pmax = _set(self.pmin), _set(self.pmax)
        if pmin is not None and pmax is not None and pmin > pmax:
            raise InvalidAttributes(f"pmin ({pmin}) must not exceed pmax ({pmax})")
        epmin, epmax = _set(self.epmin), _set(self.epmax)
        if epmin is not None and epmax is not None and epmin > epmax:
            raise InvalidAttributes(f"epmin ({epmin}) must not exceed epmax ({epmax})")
        gt, lt, st = _set(self.gt), _set(self.lt), _set(self.st)
        if gt is not None and lt is not None:
            if not lt < gt:
                raise InvalidAttributes(f"lt ({lt}) must be less than gt ({gt})")
            if st is not None and not _exact(lt) + 2 * _exact(st) < _exact(gt):
                raise InvalidAttributes(f"lt + 2*st must be less than gt ({lt}, {st}, {gt})")

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in NAMES)

    def to_query(self) -> list[str]:
        """Uri-Query strings: `pmin=10`, `gt=20.5`, and a bare `pmin` for UNSET."""
        out: list[str] = []
        for name in NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            if value is UNSET:
                out.append(name)
            elif isinstance(value, float):
                out.append(f"{name}={_format_float(value)}")
            else:
                out.append(f"{name}={value}")
        return out

    @classmethod
    def from_query(cls, queries: Iterable[str]) -> NotificationAttributes:
        """Parse Write-Attributes Uri-Query strings; unknown names and repeats are errors."""
        values: dict[str, int | float | Unset] = {}
        for query in queries:
            name, sep, raw = query.partition("=")
            if name not in NAMES:
                raise InvalidAttributes(f"unknown attribute {name!r}")
            if name in values:
                raise InvalidAttributes(f"attribute {name!r} given twice")
            values[name] = _parse_value(name, raw) if sep else UNSET
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_link_params(cls, params: Mapping[str, str | None]) -> NotificationAttributes:
        """Pick the notification attributes out of a Discover link's parameters."""
        values: dict[str, int | float] = {}
        for name in NAMES:
            if name in params:
                raw = params[name]
                if raw is None:
                    raise InvalidAttributes(f"attribute {name!r} without a value")
                values[name] = _parse_value(name, raw)
        return cls(**values)  # type: ignore[arg-type]

    def apply(self, update: NotificationAttributes) -> NotificationAttributes:
        """The attributes after a Write-Attributes: set what it sets, drop what it unsets."""
        merged: dict[str, object] = {}
        for f in fields(self):
            new = getattr(update, f.name)
            old = getattr(self, f.name)
            merged[f.name] = old if new is None else (None if new is UNSET else new)
        return NotificationAttributes(**merged)  # type: ignore[arg-type]


def _set(value: int | float | Unset | None) -> float | None:
    return None if value is None or value is UNSET else float(value)


def _parse_value(name: str, raw: str) -> int | float:
    if name in _FLOAT_NAMES:
        if not _FLOAT.fullmatch(raw):
            raise InvalidAttributes(f"{name} must be a number, got {raw!r}")
        return float(raw)
    if not _INT.fullmatch(raw):
        raise InvalidAttributes(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)
