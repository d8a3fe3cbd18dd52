"""The LwM2M object model: objects, resources, their types and operations.

Codecs need the model to know a resource's type (TLV and text carry no type),
the server needs it to validate requests, the UI to show names and units.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias


class ResourceType(enum.Enum):
    STRING = "String"
    INTEGER = "Integer"
    UNSIGNED_INTEGER = "Unsigned Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    OPAQUE = "Opaque"
    TIME = "Time"
    OBJLNK = "Objlnk"
    CORELNK = "Corelnk"
    NONE = "none"  # executable resources carry no value


class Operations(enum.Flag):
    NONE = 0
    READ = enum.auto()
    WRITE = enum.auto()
    EXECUTE = enum.auto()

    @classmethod
    def parse(cls, text: str) -> Operations:
        """DDF spelling: R, W, RW, E, or empty."""
        ops = cls.NONE
        for ch in text.strip().upper():
            if ch == "R":
                ops |= cls.READ
            elif ch == "W":
                ops |= cls.WRITE
            elif ch == "E":
                ops |= cls.EXECUTE
        return ops


@dataclass(frozen=True, slots=True)
class ObjectLink:
    """An Objlnk value: a reference to object instance `object_id:instance_id`."""

    object_id: int
    instance_id: int

    def __str__(self) -> str:
        return f"{self.object_id}:{self.instance_id}"


# One decoded LwM2M value. TIME is a timezone-aware datetime, OPAQUE is bytes,
# CORELNK is the link-format text, NONE never appears as a value.
Value: TypeAlias = str | int | float | bool | bytes | datetime | ObjectLink


@dataclass(frozen=True, slots=True)
class ResourceModel:
    id: int
    name: str
    type: ResourceType
    operations: Operations = Operations.READ
    multiple: bool = False
    mandatory: bool = False
    range: str = ""
    units: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class ObjectModel:
    id: int
    name: str
    resources: dict[int, ResourceModel] = field(default_factory=dict)
    version: str = "1.0"
    lwm2m_version: str = "1.0"
    multiple: bool = True
    mandatory: bool = False
    urn: str = ""
    description: str = ""

    def resource(self, resource_id: int) -> ResourceModel | None:
        return self.resources.get(resource_id)
