"""A simulated device's object tree: instances and resource values, typed by the model.

Values live in nested dicts (object -> instance -> resource -> value, or a dict of
resource instances for a multiple resource) because the device's operations walk
the tree by level; `read` flattens a subtree into the `dict[Path, Value]` the
content-format codecs take. Executable resources have no value and are not
stored; the model says they exist.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.lwm2m import content
from shoal.lwm2m.link import ObjectInfo
from shoal.lwm2m.model import ObjectModel, Operations, ResourceModel, ResourceType, Value
from shoal.lwm2m.path import Path
from shoal.lwm2m.registry import ModelRegistry

Resource = Value | dict[int, Value]
Instance = dict[int, Resource]

NUMERIC_TYPES = frozenset({ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.FLOAT})


class ObjectTree:
    """Objects, instances and resource values of one device."""

    __slots__ = ("executables", "model", "objects")

    def __init__(self, model: ModelRegistry) -> None:
        self.model = model
        self.objects: dict[int, dict[int, Instance]] = {}
        # (object id, resource id) of the executable resources this device implements
        self.executables: set[tuple[int, int]] = set()

    # -- model -------------------------------------------------------------------

    def object_model(self, oid: int) -> ObjectModel | None:
        return self.model.get(oid)

    def resource_model(self, oid: int, rid: int) -> ResourceModel | None:
        return self.model.resource(oid, rid)

    # -- structure ---------------------------------------------------------------

    def add_instance(
        self, oid: int, iid: int, values: Mapping[int, Resource] | None = None
    ) -> None:
        inst: Instance = {}
        for rid, value in (values or {}).items():
            inst[rid] = dict(value) if isinstance(value, dict) else value
        self.objects.setdefault(oid, {})[iid] = inst

    def remove_instance(self, oid: int, iid: int) -> bool:
        instances = self.objects.get(oid)
        if instances is None or iid not in instances:
            return False
        del instances[iid]
        return True

    def instance(self, oid: int, iid: int) -> Instance | None:
        instances = self.objects.get(oid)
        return None if instances is None else instances.get(iid)

    def free_instance_id(self, oid: int) -> int:
        used = self.objects.get(oid, {})
        iid = 0
        while iid in used:
            iid += 1
        return iid

    def exists(self, path: Path) -> bool:
        """The path names an object, instance, resource (stored or executable) or
        resource instance of this device."""
        n = len(path)
        if n == 0:
            return True
        instances = self.objects.get(path[0])
        if instances is None:
            return False
        if n == 1:
            return True
        inst = instances.get(path[1])
        if inst is None:
            return False
        if n == 2:
            return True
        if path[2] in inst:
            if n == 3:
                return True
            res = inst[path[2]]
            return isinstance(res, dict) and path[3] in res
        return n == 3 and (path[0], path[2]) in self.executables

    def links(self, versions: bool) -> dict[int, ObjectInfo]:
        """What the Register payload says: each object, its version, its instances."""
        out: dict[int, ObjectInfo] = {}
        for oid in sorted(self.objects):
            version = None
            if versions:
                om = self.object_model(oid)
                if om is not None and om.version != "1.0":
                    version = om.version
            out[oid] = ObjectInfo(version, tuple(sorted(self.objects[oid])))
        return out

    # -- values ------------------------------------------------------------------

    def get(self, path: Path) -> Value | None:
        """The value of a single resource or resource instance, else None."""
        inst = self.instance(path[0], path[1]) if len(path) >= 3 else None
        if inst is None:
            return None
        res = inst.get(path[2])
        if len(path) == 4:
            return res.get(path[3]) if isinstance(res, dict) else None
        return None if isinstance(res, dict) else res

    def set(self, path: Path, value: Value) -> None:
        """Set a resource (/o/i/r) or resource instance (/o/i/r/ri) of an existing instance."""
        inst = self.objects[path[0]][path[1]]
        if len(path) == 4:
            res = inst.get(path[2])
            if not isinstance(res, dict):
                res = inst[path[2]] = {}
            res[path[3]] = value
        else:
            inst[path[2]] = value

    def set_multi(self, path: Path, values: Mapping[int, Value]) -> None:
        self.objects[path[0]][path[1]][path[2]] = dict(values)

    def read(self, path: Path, with_empty: bool = False) -> dict[Path, Value]:
        """The readable values at and below `path`, flattened for the codecs.

        `with_empty` adds `content.EMPTY` entries for instances without readable
        resources and multiple resources without instances, for the formats that
        can say so (TLV, LwM2M CBOR).
        """
        out: dict[Path, Value] = {}
        n = len(path)
        oids = [path[0]] if n else sorted(self.objects)
        for oid in oids:
            instances = self.objects.get(oid, {})
            iids = [path[1]] if n >= 2 else sorted(instances)
            for iid in iids:
                inst = instances.get(iid)
                if inst is None:
                    continue
                rids = [path[2]] if n >= 3 else sorted(inst)
                start = len(out)
                for rid in rids:
                    if rid not in inst:
                        continue
                    rm = self.resource_model(oid, rid)
                    if rm is not None and not rm.operations & Operations.READ:
                        continue
                    res = inst[rid]
                    if isinstance(res, dict):
                        if n == 4:
                            if path[3] in res:
                                out[path] = res[path[3]]
                            continue
                        if not res and with_empty:
                            out[Path(oid, iid, rid)] = content.EMPTY
                        for riid in sorted(res):
                            out[Path(oid, iid, rid, riid)] = res[riid]
                    else:
                        out[Path(oid, iid, rid)] = res
                if n <= 2 and len(out) == start and with_empty:
                    out[Path(oid, iid)] = content.EMPTY
        return out

    def resource_ids(self, oid: int, iid: int) -> list[int]:
        """Resources of an instance, stored and executable, for Discover."""
        inst = self.instance(oid, iid) or {}
        ids = set(inst) | {rid for o, rid in self.executables if o == oid}
        return sorted(ids)

    def dim(self, path: Path) -> int | None:
        """How many instances a multiple resource has (Discover's `dim`)."""
        inst = self.instance(path[0], path[1])
        res = None if inst is None else inst.get(path[2])
        return len(res) if isinstance(res, dict) else None

    def number(self, path: Path) -> float | None:
        """A single numeric resource's value as a float, for gt/lt/st checks."""
        value = self.get(path) if len(path) >= 3 else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)
