"""LwM2M paths: /o, /o/i, /o/i/r, /o/i/r/ri, and the root path /.

A path is a tuple subclass so it hashes and compares fast and can be used as a
dict key in value maps, observation tables and composite requests.
"""

from __future__ import annotations

MAX_ID = 65535


class InvalidPath(ValueError):
    """A string or set of ids that is not a valid LwM2M path."""


class Path(tuple[int, ...]):
    """An LwM2M path of 0 to 4 ids, each 0..65535 (65535 is reserved, MAX_ID exclusive)."""

    __slots__ = ()

    def __new__(cls, *ids: int) -> Path:
        if len(ids) > 4:
            raise InvalidPath(f"a path has at most 4 levels, got {len(ids)}")
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < MAX_ID:
                raise InvalidPath(f"path id out of range 0..65534: {i!r}")
        return super().__new__(cls, ids)

    @classmethod
    def parse(cls, text: str) -> Path:
        """Parse `/3/0/9`, `3/0/9` or `/`; reject empty segments and non-digits."""
        stripped = text.strip("/") if text != "/" else ""
        if not stripped:
            if text in ("", "/"):
                return cls()
            raise InvalidPath(f"invalid path {text!r}")
        parts = stripped.split("/")
        ids: list[int] = []
        for part in parts:
            if not part.isdigit() or not part.isascii() or (len(part) > 1 and part[0] == "0"):
                raise InvalidPath(f"invalid path segment {part!r} in {text!r}")
            ids.append(int(part))
        return cls(*ids)

    @classmethod
    def from_segments(cls, segments: list[str] | tuple[str, ...]) -> Path:
        """Build from CoAP Uri-Path segments."""
        return cls.parse("/" + "/".join(segments)) if segments else cls()

    @property
    def object_id(self) -> int | None:
        return self[0] if len(self) > 0 else None

    @property
    def instance_id(self) -> int | None:
        return self[1] if len(self) > 1 else None

    @property
    def resource_id(self) -> int | None:
        return self[2] if len(self) > 2 else None

    @property
    def resource_instance_id(self) -> int | None:
        return self[3] if len(self) > 3 else None

    def is_root(self) -> bool:
        return len(self) == 0

    def is_object(self) -> bool:
        return len(self) == 1

    def is_instance(self) -> bool:
        return len(self) == 2

    def is_resource(self) -> bool:
        return len(self) == 3

    def is_resource_instance(self) -> bool:
        return len(self) == 4

    def parent(self) -> Path:
        if not self:
            raise InvalidPath("the root path has no parent")
        return Path(*self[:-1])

    def child(self, id_: int) -> Path:
        return Path(*self, id_)

    def startswith(self, other: Path) -> bool:
        """True when `other` is this path or one of its ancestors."""
        return len(other) <= len(self) and tuple(self[: len(other)]) == tuple(other)

    def segments(self) -> list[str]:
        """CoAP Uri-Path segments."""
        return [str(i) for i in self]

    def __str__(self) -> str:
        return "/" + "/".join(str(i) for i in self)

    def __repr__(self) -> str:
        return f"Path({str(self)!r})"
