"""The LwM2M object model as the pages show it: objects a device registered, the
resources the model defines for them, and the water-quality metrics of a pen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shoal.lwm2m.model import Operations, ResourceModel, ResourceType
from shoal.lwm2m.registry import ModelRegistry
from shoal.server.registration import Registration

# -- water quality -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    """One water-quality measurement an enclosure page charts."""

    key: str
    label: str
    path: str
    unit: str  # shown when the sample carries none (IPSO Sensor Value has no fixed unit)
    digits: int


METRICS = (
    Metric("temperature", "Temperature", "/3303/0/5700", "°C", 1),
    Metric("oxygen", "Dissolved oxygen", "/3325/0/5700", "mg/L", 1),
    Metric("ph", "pH", "/3326/0/5700", "", 2),
    Metric("salinity", "Salinity / conductivity", "/3327/0/5700", "mS/cm", 1),
    Metric("turbidity", "Turbidity", "/3300/0/5700", "NTU", 1),
)
METRIC_PATHS = {m.path: m for m in METRICS}

FISH_COUNT = "/33001/0/0"
FISH_LENGTH = "/33001/0/1"
BATTERY = "/3/0/9"

# UCUM codes devices send (IPSO Sensor Units) and how people write them.
_UNIT_TEXT = {"Cel": "°C", "degC": "°C", "Far": "°F", "%RH": "%", "ug/m3": "µg/m³", "/100": "%"}


def unit_text(unit: str | None) -> str:
    if not unit:
        return ""
    return _UNIT_TEXT.get(unit, unit)


# Time windows of the charts: (key, label, seconds, step seconds).
WINDOWS = (
    ("1h", "1 hour", 3600, 15),
    ("6h", "6 hours", 6 * 3600, 120),
    ("24h", "24 hours", 86400, 600),
    ("7d", "7 days", 7 * 86400, 3600),
)
WINDOW_BY_KEY = {w[0]: w for w in WINDOWS}

# -- object tree -----------------------------------------------------------------------

# How a browser input edits each resource type (the JS turns it back into JSON).
_INPUTS = {
    ResourceType.STRING: "string",
    ResourceType.INTEGER: "integer",
    ResourceType.UNSIGNED_INTEGER: "unsigned",
    ResourceType.FLOAT: "float",
    ResourceType.BOOLEAN: "boolean",
    ResourceType.OPAQUE: "opaque",
    ResourceType.TIME: "time",
    ResourceType.OBJLNK: "objlnk",
    ResourceType.CORELNK: "string",
    ResourceType.NONE: "none",
}

_OPS_TEXT = {
    "R": "read-only",
    "W": "write-only",
    "RW": "read/write",
    "E": "executable",
}

# Never shown: the Security object holds the device's keys.
_HIDDEN_OBJECTS = frozenset({0})


@dataclass(frozen=True, slots=True)
class ResourceView:
    id: int
    path: str
    name: str
    type: str
    input: str
    units: str
    operations: str  # "R", "RW", "E", ...
    multiple: bool
    mandatory: bool
    range: str
    description: str

    @property
    def summary(self) -> str:
        """`Float · read/write · 0..100`: what an operator needs to know to use it."""
        parts = [] if self.type == "none" else [self.type]
        parts.append(_OPS_TEXT.get(self.operations, self.operations or "no access"))
        if self.multiple:
            parts.append("multiple")
        if self.range:
            parts.append(self.range)
        return " · ".join(parts)

    @property
    def readable(self) -> bool:
        return "R" in self.operations

    @property
    def writable(self) -> bool:
        return "W" in self.operations

    @property
    def executable(self) -> bool:
        return "E" in self.operations


@dataclass(frozen=True, slots=True)
class InstanceView:
    id: int
    path: str
    resources: tuple[ResourceView, ...]


@dataclass(frozen=True, slots=True)
class ObjectView:
    id: int
    path: str
    name: str
    version: str | None
    known: bool
    description: str
    instances: tuple[InstanceView, ...]


def _ops(ops: Operations) -> str:
    return "".join(
        letter
        for flag, letter in (
            (Operations.READ, "R"),
            (Operations.WRITE, "W"),
            (Operations.EXECUTE, "E"),
        )
        if flag in ops
    )


def _resource_view(base: str, res: ResourceModel) -> ResourceView:
    return ResourceView(
        id=res.id,
        path=f"{base}/{res.id}",
        name=res.name,
        type=res.type.value,
        input=_INPUTS.get(res.type, "string"),
        units=unit_text(res.units),
        operations=_ops(res.operations),
        multiple=res.multiple,
        mandatory=res.mandatory,
        range=res.range,
        description=res.description,
    )


def object_tree(reg: Registration, registry: ModelRegistry) -> list[ObjectView]:
    """Objects and instances from the registration; resources from the model of the
    object version the device declared (or the closest one known)."""
    out: list[ObjectView] = []
    for object_id in sorted(reg.objects):
        if object_id in _HIDDEN_OBJECTS:
            continue
        version = reg.object_version(object_id)
        model = registry.get_compatible(object_id, version)
        info = reg.links.objects[object_id]
        instance_ids: Iterable[int] = info.instances
        instances = []
        for iid in instance_ids:
            base = f"/{object_id}/{iid}"
            resources: tuple[ResourceView, ...] = ()
            if model is not None:
                resources = tuple(
                    _resource_view(base, model.resources[rid]) for rid in sorted(model.resources)
                )
            instances.append(InstanceView(iid, base, resources))
        out.append(
            ObjectView(
                id=object_id,
                path=f"/{object_id}",
                name=model.name if model is not None else f"Object {object_id}",
                version=version or (model.version if model is not None else None),
                known=model is not None,
                description=_first_sentence(model.description) if model is not None else "",
                instances=tuple(instances),
            )
        )
    return out


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def resource_name(registry: ModelRegistry, path: str) -> str:
    """`Battery Level` for `/3/0/9`, `Temperature` for a water-quality metric,
    `Connectivity Monitoring · Radio Signal Strength` otherwise; the path when unknown."""
    metric = METRIC_PATHS.get(path)
    if metric is not None:
        return metric.label
    parts = [p for p in path.split("/") if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        return path
    if not ids:
        return path
    model = registry.get(ids[0])
    if model is None:
        return path
    if len(ids) < 3:
        return model.name
    res = model.resources.get(ids[2])
    if res is None:
        return model.name
    return res.name if ids[0] == 3 else f"{model.name} · {res.name}"


def value_unit(path: str, unit: str | None) -> str:
    """The unit a sample carries, else the usual unit of a water-quality metric."""
    if unit:
        return unit_text(unit)
    metric = METRIC_PATHS.get(path)
    return metric.unit if metric is not None else ""
