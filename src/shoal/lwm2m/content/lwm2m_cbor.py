"""LwM2M CBOR (content-format 11544): LwM2M 1.2's nested-map format.

Map keys are path ids, or arrays of ids that skip levels:
`{3: {0: {0: "ACME", 9: 100, 7: {0: 3800, 1: 5000}}}}` and
`{[3, 0]: {0: "ACME"}, [3303, 0, 5700]: 21.5}` say the same kind of thing. Keys
always start at the object id, whatever the request path. An empty map marks an
instance with no resources (or a multiple resource with no instances). Time is
tag 1 over seconds, Objlnk the text "o:i". The format carries no timestamps, and
null values (Write-Composite deletes) are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shoal.lwm2m.content._common import (
    EMPTY,
    CodecError,
    ModelLookup,
    cbor_dumps,
    cbor_loads,
    check_under,
    coerce,
    infer_type,
    make_path,
    model_type,
    resource_model,
)
from shoal.lwm2m.content.cbor import to_cbor
from shoal.lwm2m.model import ResourceType, Value
from shoal.lwm2m.path import Path


def encode(values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None) -> bytes:
    """Nest values by path, collapsing single-child chains into array keys."""
    tree: dict[int, Any] = {}
    for path, value in values.items():
        check_under(path, root)
        depth = len(path)
        if depth < 2:
            raise CodecError(f"LwM2M CBOR values need instance or deeper paths, got {path}")
        node = tree
        for i in path[:-1]:
            node = node.setdefault(i, {})
            if not isinstance(node, dict):
                raise CodecError(f"{path} is under a path that already has a value")
        last = path[-1]
        if depth == 2 or (depth == 3 and _is_multiple(model, path)):
            if value != EMPTY:
                raise CodecError(f"{path} holds no value of its own: key values by their paths")
            if not isinstance(node.setdefault(last, {}), dict):
                raise CodecError(f"{path} given twice")
            continue
        if last in node:
            raise CodecError(f"{path} given twice or also as a container")
        rtype = model_type(model, path)
        if rtype is None or rtype is ResourceType.NONE:
            rtype = infer_type(value)
        node[last] = to_cbor(coerce(value, rtype, path))
    return cbor_dumps(_compact(tree))


def _is_multiple(model: ModelLookup | None, path: Path) -> bool:
    rm = resource_model(model, path)
    return rm is not None and rm.multiple


def _compact(node: dict[int, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, child in node.items():
        key: tuple[int, ...] = (k,)
        while isinstance(child, dict) and len(child) == 1:
            ((k2, child),) = child.items()
            key += (k2,)
        out[key if len(key) > 1 else k] = _compact(child) if isinstance(child, dict) else child
    return out


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    doc = cbor_loads(payload, max_depth=12)
    if not isinstance(doc, dict):
        raise CodecError("LwM2M CBOR payload must be a map")
    out: dict[Path, Value] = {}
    _walk(doc, (), out, model)
    if root:
        for path in out:
            check_under(path, root)
    return out


def _walk(
    node: dict[Any, Any], prefix: tuple[int, ...], out: dict[Path, Value], model: ModelLookup | None
) -> None:
    if not node and len(prefix) in (2, 3):
        out[make_path(prefix)] = EMPTY
    for key, child in node.items():
        if type(key) is int:
            ids = (*prefix, key)
        elif type(key) is tuple and key and all(type(i) is int for i in key):
            ids = prefix + key
        else:
            raise CodecError(f"LwM2M CBOR key must be an id or an array of ids, got {key!r:.40}")
        if len(ids) > 4:
            raise CodecError(f"path deeper than 4 levels: {ids}")
        if isinstance(child, dict):
            if len(ids) == 4:
                raise CodecError(f"resource instance {ids} cannot hold a map")
            _walk(child, ids, out, model)
            continue
        path = make_path(ids)
        if len(ids) < 3:
            raise CodecError(f"a value needs a resource or resource-instance path, got {path}")
        if child is None:
            raise CodecError(f"{path}: null values (Write-Composite delete) are not supported")
        out[path] = coerce(child, model_type(model, path), path)
