"""Firmware versions compared as versions, never as strings or substrings.

`1.10.0 > 1.9.2`, `2.0.0rc1 < 2.0.0`, and `1.2` does not "contain" `1.20`.
Versions that PEP 440 understands (most firmware versions, with an optional
leading `v`) are compared by `packaging`; anything else (`2024.03-r2`,
`B17_hotfix`) falls back to a natural order: runs of digits compare as numbers,
other runs as case-folded text.

A version spec says which versions a package may be applied over:
`">=1.0,<2.0 || ==0.9.5"` is one of the comma-joined clauses groups (all of
one group must hold; `||` separates alternatives). Operators: `== != >= <= > <`;
a bare version means `==`; `==1.2.*` matches 1.2 and every 1.2.x, not 1.20.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

_RUN = re.compile(r"\d+|[A-Za-z]+")
_CLAUSE = re.compile(r"^\s*(==|!=|>=|<=|>|<)?\s*(\S+?)\s*$")
_VERSION_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*(?:\.\*)?")


class VersionSpecError(ValueError):
    """A version spec that does not parse."""


def _natural(text: str) -> tuple[tuple[int, int, str], ...]:
    # numbers sort after words at the same position ("1.0.beta" < "1.0.0")
    return tuple(
        (1, int(r), "") if r.isdigit() else (0, 0, r.casefold()) for r in _RUN.findall(text)
    )


def _pep440(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


@functools.total_ordering
class FirmwareVersion:
    """An orderable version; equal versions need not be equal strings (`1.0` == `1.0.0`)."""

    __slots__ = ("_natural", "_pep", "text")

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        if not self.text:
            raise ValueError("empty version")
        self._pep = _pep440(self.text)
        self._natural = _natural(self.text)

    def _key_against(self, other: FirmwareVersion) -> tuple[object, object]:
        if self._pep is not None and other._pep is not None:
            return self._pep, other._pep
        return self._natural, other._natural

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            other = FirmwareVersion(other)
        if not isinstance(other, FirmwareVersion):
            return NotImplemented
        a, b = self._key_against(other)
        return a == b

    def __lt__(self, other: object) -> bool:
        if isinstance(other, str):
            other = FirmwareVersion(other)
        if not isinstance(other, FirmwareVersion):
            return NotImplemented
        a, b = self._key_against(other)
        return bool(a < b)  # type: ignore[operator]

    def __hash__(self) -> int:
        return hash(self._pep if self._pep is not None else self._natural)

    def release_prefix(self) -> tuple[int, ...]:
        """The leading numbers: `1.2.3rc1` -> (1, 2, 3)."""
        if self._pep is not None:
            return tuple(self._pep.release)
        out: list[int] = []
        for kind, number, _ in self._natural:
            if kind != 1:
                break
            out.append(number)
        return tuple(out)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"FirmwareVersion({self.text!r})"


def same_version(a: str | None, b: str | None) -> bool:
    """Both present and equal as versions."""
    if not a or not b:
        return False
    try:
        return FirmwareVersion(a) == FirmwareVersion(b)
    except ValueError:
        return a.strip() == b.strip()


@dataclass(frozen=True, slots=True)
class _Clause:
    op: str
    version: FirmwareVersion
    prefix: tuple[int, ...] | None  # for ==1.2.*

    def holds(self, v: FirmwareVersion) -> bool:
        if self.prefix is not None:
            match = v.release_prefix()[: len(self.prefix)] == self.prefix
            return match if self.op == "==" else not match
        if self.op == "==":
            return v == self.version
        if self.op == "!=":
            return v != self.version
        if self.op == ">=":
            return v >= self.version
        if self.op == "<=":
            return v <= self.version
        if self.op == ">":
            return v > self.version
        return v < self.version


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """Alternatives (`||`) of clause groups (`,`); the empty spec matches everything."""

    text: str
    groups: tuple[tuple[_Clause, ...], ...]

    @classmethod
    def parse(cls, text: str | None) -> VersionSpec:
        text = (text or "").strip()
        if not text or text == "*":
            return cls("", ())
        groups = []
        for alt in text.split("||"):
            clauses = []
            for part in alt.split(","):
                if not part.strip():
                    raise VersionSpecError(f"empty clause in version spec {text!r}")
                m = _CLAUSE.match(part)
                if m is None:
                    raise VersionSpecError(f"cannot read {part.strip()!r} in {text!r}")
                op = m.group(1) or "=="
                raw = m.group(2)
                if not _VERSION_TEXT.fullmatch(raw):
                    raise VersionSpecError(f"{raw!r} is not a version (in {text!r})")
                prefix = None
                if raw.endswith(".*"):
                    if op not in ("==", "!="):
                        raise VersionSpecError(f"a wildcard needs == or != in {text!r}")
                    prefix = FirmwareVersion(raw[:-2]).release_prefix()
                    if not prefix:
                        raise VersionSpecError(f"a wildcard needs numbers before it in {text!r}")
                    raw = raw[:-2]
                try:
                    version = FirmwareVersion(raw)
                except ValueError as exc:
                    raise VersionSpecError(str(exc)) from None
                clauses.append(_Clause(op, version, prefix))
            groups.append(tuple(clauses))
        return cls(text, tuple(groups))

    def matches(self, version: str | None) -> bool:
        if not self.groups:
            return True
        if not version or not version.strip():
            return False
        v = FirmwareVersion(version)
        return any(all(c.holds(v) for c in group) for group in self.groups)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def __str__(self) -> str:
        return self.text
