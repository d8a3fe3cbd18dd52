"""Loader for OMA LwM2M object definition files (DDF XML, LWM2M.xsd / LWM2M-v1_1.xsd).

Vendors ship their private objects as DDF files and operators drop them next to
the server, so the loader must be strict about what would mis-decode device data
(ids, types, multiplicity) yet tolerant of the formatting the public registry
really contains (byte-order marks, stray whitespace, CDATA, empty elements).

The XML comes from outside, so DTDs and entity declarations are refused outright:
that closes entity-expansion ("billion laughs") and external-entity attacks
without needing defusedxml.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path as FsPath
from typing import NoReturn
from xml.parsers import expat

from shoal.lwm2m.model import ObjectModel, Operations, ResourceModel, ResourceType
from shoal.lwm2m.path import MAX_ID

__all__ = ["DdfError", "load_ddf", "load_directory", "normalize_version"]


class DdfError(ValueError):
    """A DDF file that is not well-formed XML, uses a DTD, or defines an object badly."""


_TYPES: dict[str, ResourceType] = {
    "string": ResourceType.STRING,
    "integer": ResourceType.INTEGER,
    "unsignedinteger": ResourceType.UNSIGNED_INTEGER,
    "float": ResourceType.FLOAT,
    "boolean": ResourceType.BOOLEAN,
    "opaque": ResourceType.OPAQUE,
    "time": ResourceType.TIME,
    "objlnk": ResourceType.OBJLNK,
    "corelnk": ResourceType.CORELNK,
    "none": ResourceType.NONE,
}

_VERSION = re.compile(r"\d+(?:\.\d+)*")
_URN_VERSION = re.compile(r":(\d+\.\d+)$")


def normalize_version(text: str | None) -> str | None:
    """Canonical `major.minor` spelling of an object or LwM2M version, or None if invalid.

    Devices and files write `1`, `1.0` or ` 1.1 `; the registry keys on one spelling.
    """
    if text is None:
        return None
    text = text.strip()
    if not _VERSION.fullmatch(text):
        return None
    parts = [str(int(p)) for p in text.split(".")]
    if len(parts) == 1:
        parts.append("0")
    return ".".join(parts)


def load_ddf(data: bytes | str | os.PathLike[str]) -> list[ObjectModel]:
    """Parse one DDF document: `bytes` are the XML itself, a `str` or path names a file.

    Well-formed XML that defines no object (the registry's Common.xml, DDF.xml,
    units list) yields an empty list, so a whole directory can be loaded blindly.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        source = "<bytes>"
        raw = bytes(data)
    else:
        source = os.fspath(data)
        try:
            raw = FsPath(source).read_bytes()
        except OSError as e:
            raise DdfError(f"{source}: cannot read: {e.strerror or e}") from e
    root = _parse_xml(raw, source)
    if root.tag != "LWM2M":
        return []
    models: list[ObjectModel] = []
    for obj in root.findall("Object"):
        if obj.get("ObjectType", "MODefinition").strip() != "MODefinition":
            continue
        models.append(_object(obj, source))
    return models


def load_directory(path: str | os.PathLike[str]) -> list[ObjectModel]:
    """Load every `*.xml` file in a directory (not recursive), in object-id order.

    Schemas (`.xsd`) and non-object XML files are skipped; a broken object file
    raises, because silently missing a vendor's object would surface much later
    as undecodable device data.
    """
    directory = FsPath(path)
    if not directory.is_dir():
        raise DdfError(f"{directory}: not a directory")
    models: list[ObjectModel] = []
    for file in sorted(directory.glob("*.xml"), key=_file_order):
        if file.is_file():
            models.extend(load_ddf(file))
    return models


def _file_order(file: FsPath) -> tuple[int, int, str]:
    """Numeric order for `<id>.xml` names (3 before 10), then everything else by name."""
    stem = file.stem.split("-")[0].split("_")[0]
    return (0, int(stem), file.name) if stem.isascii() and stem.isdigit() else (1, 0, file.name)


def _local_name(tag: str) -> str:
    return tag.rpartition(":")[2]


def _parse_xml(raw: bytes, source: str) -> ET.Element:
    """Build an ElementTree with expat directly so DTDs can be refused before any expansion."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True

    def refuse_dtd(*_args: object) -> NoReturn:
        raise DdfError(f"{source}: DTDs (<!DOCTYPE>) are not allowed in DDF files")

    def refuse_entity(*_args: object) -> NoReturn:
        raise DdfError(f"{source}: entity declarations (<!ENTITY>) are not allowed in DDF files")

    def start(tag: str, attrs: dict[str, str]) -> None:
        builder.start(_local_name(tag), attrs)

    def end(tag: str) -> None:
        builder.end(_local_name(tag))

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.ExternalEntityRefHandler = refuse_entity
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(raw, True)
    except expat.ExpatError as e:
        raise DdfError(f"{source}: malformed XML: {e}") from None
    return builder.close()


def _fail(source: str, where: str, message: str) -> NoReturn:
    raise DdfError(f"{source}: {where}: {message}")


def _text(el: ET.Element, tag: str) -> str:
    return (el.findtext(tag) or "").strip()


def _name(el: ET.Element) -> str:
    """Names are shown in the UI and matched by people: collapse stray double spaces."""
    return " ".join(_text(el, "Name").split())


def _description(el: ET.Element, tag: str) -> str:
    """Strip the XML indentation from each line but keep line breaks (enumerations)."""
    return "\n".join(line.strip() for line in _text(el, tag).splitlines())


def _id(text: str | None, source: str, where: str) -> int:
    value = (text or "").strip()
    if not value.isascii() or not value.isdigit() or int(value) >= MAX_ID:
        _fail(source, where, f"id must be an integer 0..{MAX_ID - 1}, got {text!r}")
    return int(value)


def _choice(value: str, source: str, where: str, field: str, yes: str, no: str) -> bool:
    """A two-valued DDF enumeration (Multiple/Single, Mandatory/Optional); empty means `no`."""
    lowered = value.lower()
    if lowered == yes.lower():
        return True
    if lowered in ("", no.lower()):
        return False
    _fail(source, where, f"{field} must be {yes!r} or {no!r}, got {value!r}")


def _version(value: str, source: str, where: str, field: str) -> str | None:
    if not value:
        return None
    version = normalize_version(value)
    if version is None:
        _fail(source, where, f"{field} must look like '1.0', got {value!r}")
    return version


def _object(obj: ET.Element, source: str) -> ObjectModel:
    object_id = _id(obj.findtext("ObjectID"), source, "ObjectID")
    where = f"object {object_id}"
    urn = _text(obj, "ObjectURN")
    urn_version = _URN_VERSION.search(urn)
    version = (
        _version(_text(obj, "ObjectVersion"), source, where, "ObjectVersion")
        or (urn_version.group(1) if urn_version else None)
        or "1.0"
    )
    lwm2m_version = _version(_text(obj, "LWM2MVersion"), source, where, "LWM2MVersion") or "1.0"
    resources: dict[int, ResourceModel] = {}
    container = obj.find("Resources")
    for item in container.findall("Item") if container is not None else ():
        resource = _resource(item, object_id, source)
        if resource.id in resources:
            _fail(source, where, f"resource {resource.id} is defined twice")
        resources[resource.id] = resource
    return ObjectModel(
        id=object_id,
        name=_name(obj),
        resources=resources,
        version=version,
        lwm2m_version=lwm2m_version,
        multiple=_choice(
            _text(obj, "MultipleInstances"),
            source,
            where,
            "MultipleInstances",
            "Multiple",
            "Single",
        ),
        mandatory=_choice(
            _text(obj, "Mandatory"), source, where, "Mandatory", "Mandatory", "Optional"
        ),
        urn=urn,
        description=_description(obj, "Description1"),
    )


def _resource(item: ET.Element, object_id: int, source: str) -> ResourceModel:
    resource_id = _id(item.get("ID"), source, f"object {object_id} resource ID")
    where = f"resource /{object_id}/{resource_id}"
    ops_text = _text(item, "Operations")
    if set(ops_text.upper()) - set("RWE"):
        _fail(source, where, f"Operations must be R, W, RW, E or empty, got {ops_text!r}")
    operations = Operations.parse(ops_text)
    type_text = _text(item, "Type")
    resource_type = _TYPES.get(type_text.replace(" ", "").lower())
    if resource_type is None:
        # Empty (or an unknown spelling): executables carry no value; otherwise the
        # value is at least readable as text.
        resource_type = (
            ResourceType.NONE if Operations.EXECUTE in operations else ResourceType.STRING
        )
    return ResourceModel(
        id=resource_id,
        name=_name(item),
        type=resource_type,
        operations=operations,
        multiple=_choice(
            _text(item, "MultipleInstances"),
            source,
            where,
            "MultipleInstances",
            "Multiple",
            "Single",
        ),
        mandatory=_choice(
            _text(item, "Mandatory"), source, where, "Mandatory", "Mandatory", "Optional"
        ),
        range=_text(item, "RangeEnumeration"),
        units=_text(item, "Units"),
        description=_description(item, "Description"),
    )
