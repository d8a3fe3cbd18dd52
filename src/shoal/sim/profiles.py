"""Device profiles: which objects a simulated device has and how its values move.

Values follow the simulated clock's day (water warms in the afternoon, dissolved
oxygen peaks with photosynthesis and falls before dawn, cameras see little at
night) with per-device offsets and noise from the device's own seeded RNG, so
one seed gives the same fleet every run and no two devices look identical.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import ClassVar

from shoal.lwm2m.camera import FISH_CAMERA_OBJECT_ID, FishCameraResource
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path
from shoal.sim.tree import ObjectTree

DAY = 86400.0
TIDE = 44712.0  # semidiurnal tide, 12.42 h

# IPSO sensor resource ids
SENSOR_VALUE = 5700
SENSOR_UNITS = 5701
MIN_MEASURED = 5601
MAX_MEASURED = 5602
MIN_RANGE = 5603
MAX_RANGE = 5604
RESET_MIN_MAX = 5605
APPLICATION_TYPE = 5750
SENSOR_TYPE = 5751
TIMESTAMP = 5518

TEMPERATURE = 3303
GENERIC_SENSOR = 3300
CONCENTRATION = 3325
ACIDITY = 3326
CONDUCTIVITY = 3327

CAMERA = FISH_CAMERA_OBJECT_ID


def sim_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(int(t), UTC)


def diurnal(t: float, peak_hour: float) -> float:
    """-1..1 over the simulated day, 1 at `peak_hour` UTC."""
    return math.cos(2 * math.pi * ((t / DAY) - peak_hour / 24.0))


class Profile:
    """A kind of device. One instance per device, holding that device's quirks."""

    kind: ClassVar[str] = "device"
    model_number: ClassVar[str] = "SIM"
    device_type: ClassVar[str] = "simulated device"
    manufacturer: ClassVar[str] = "Shoal Simulated Devices"
    # Daily battery drain in % per simulated day, and whether a solar panel recharges it.
    battery_drain_per_day: ClassVar[float] = 0.5
    solar: ClassVar[bool] = False
    # (object id, resource id) of the executable resources `execute` implements
    executables: ClassVar[tuple[tuple[int, int], ...]] = ()

    __slots__ = ("rng",)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def populate(self, tree: ObjectTree, t: float) -> None:
        """Add this profile's objects (beyond 1, 3, 4 and 5) to the tree."""

    def step(self, tree: ObjectTree, t: float, stuck: bool) -> list[Path]:
        """Move the values to simulated time `t`; return the resource paths that changed."""
        return []

    def send_paths(self) -> list[Path]:
        """What a periodic Send reports."""
        return []

    def execute(self, tree: ObjectTree, path: Path, t: float) -> list[Path] | None:
        """Run a profile-specific executable resource; None if it is not one."""
        return None


class _Sensor:
    """One IPSO sensor instance: a daily cycle plus noise, clamped to its range."""

    __slots__ = (
        "amp",
        "hi",
        "lo",
        "max_path",
        "mean",
        "min_path",
        "noise",
        "path",
        "peak",
        "places",
        "time_path",
        "value_path",
    )

    def __init__(
        self,
        path: Path,
        mean: float,
        amp: float,
        peak: float,
        noise: float,
        lo: float,
        hi: float,
        places: int = 2,
    ) -> None:
        self.path = path
        self.mean = mean
        self.amp = amp
        self.peak = peak
        self.noise = noise
        self.lo = lo
        self.hi = hi
        self.places = places
        # the paths a reading changes, made once: a fleet samples thousands per second
        self.value_path = path.child(SENSOR_VALUE)
        self.min_path = path.child(MIN_MEASURED)
        self.max_path = path.child(MAX_MEASURED)
        self.time_path = path.child(TIMESTAMP)

    def value(self, t: float, rng: random.Random, extra: float = 0.0) -> float:
        v = self.mean + self.amp * diurnal(t, self.peak) + rng.gauss(0.0, self.noise) + extra
        return round(min(self.hi, max(self.lo, v)), self.places)


def _record(tree: ObjectTree, sensor: _Sensor, value: float, t: float, out: list[Path]) -> None:
    """Store a new reading with its min/max and timestamp, noting what changed."""
    inst = tree.instance(sensor.path[0], sensor.path[1])
    if inst is None:
        return
    if inst.get(SENSOR_VALUE) != value:
        inst[SENSOR_VALUE] = value
        out.append(sensor.value_path)
    lo, hi = inst.get(MIN_MEASURED), inst.get(MAX_MEASURED)
    if isinstance(lo, float) and value < lo:
        inst[MIN_MEASURED] = value
        out.append(sensor.min_path)
    if isinstance(hi, float) and value > hi:
        inst[MAX_MEASURED] = value
        out.append(sensor.max_path)
    inst[TIMESTAMP] = sim_datetime(t)
    out.append(sensor.time_path)


class WaterQualitySensor(Profile):
    """A multi-parameter water-quality probe hanging in a pen.

    Temperature (3303), dissolved oxygen and ammonia (3325), pH (3326),
    conductivity as salinity proxy (3327) and turbidity (3300 generic sensor).
    """

    kind = "water"
    model_number = "WQ-200"
    device_type = "water quality sensor"
    battery_drain_per_day = 0.5
    executables = tuple(
        (oid, RESET_MIN_MAX)
        for oid in (TEMPERATURE, CONCENTRATION, ACIDITY, CONDUCTIVITY, GENERIC_SENSOR)
    )

    __slots__ = ("_turbidity_event", "sensors")

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        u = rng.uniform
        self.sensors = {
            "temperature": _Sensor(
                Path(TEMPERATURE, 0), u(8.0, 15.0), u(0.4, 1.5), 16.0, 0.05, -5.0, 40.0
            ),
            "oxygen": _Sensor(
                Path(CONCENTRATION, 0), u(7.5, 10.0), u(0.6, 1.5), 15.0, 0.08, 0.0, 20.0
            ),
            "ammonia": _Sensor(
                Path(CONCENTRATION, 1), u(0.02, 0.08), 0.02, 18.0, 0.004, 0.0, 5.0, 3
            ),
            "ph": _Sensor(Path(ACIDITY, 0), u(7.7, 8.1), 0.08, 15.0, 0.01, 0.0, 14.0),
            "conductivity": _Sensor(Path(CONDUCTIVITY, 0), u(44.0, 52.0), 0.0, 0.0, 0.1, 0.0, 80.0),
            "turbidity": _Sensor(
                Path(GENERIC_SENSOR, 0), u(1.0, 4.0), 0.3, 13.0, 0.15, 0.0, 1000.0
            ),
        }
        self._turbidity_event = 0.0

    def populate(self, tree: ObjectTree, t: float) -> None:
        meta = {
            "temperature": ("Cel", -5.0, 40.0, "Water Temperature"),
            "oxygen": ("mg/L", 0.0, 20.0, "Dissolved Oxygen"),
            "ammonia": ("mg/L", 0.0, 5.0, "Ammonia"),
            "ph": ("pH", 0.0, 14.0, "pH"),
            "conductivity": ("mS/cm", 0.0, 80.0, "Salinity"),
            "turbidity": ("NTU", 0.0, 1000.0, "Turbidity"),
        }
        for name, sensor in self.sensors.items():
            units, lo, hi, app = meta[name]
            value = sensor.value(t, self.rng)
            values: dict[int, float | str | datetime] = {
                SENSOR_VALUE: value,
                SENSOR_UNITS: units,
                MIN_MEASURED: value,
                MAX_MEASURED: value,
                MIN_RANGE: lo,
                MAX_RANGE: hi,
                APPLICATION_TYPE: app,
                TIMESTAMP: sim_datetime(t),
            }
            if sensor.path[0] == GENERIC_SENSOR:
                values[SENSOR_TYPE] = "Turbidity"
            tree.add_instance(sensor.path[0], sensor.path[1], values)

    def step(self, tree: ObjectTree, t: float, stuck: bool) -> list[Path]:
        if stuck:
            return []
        changed: list[Path] = []
        rng = self.rng
        # a storm or a feeding stirs the water now and then; it settles slowly
        if rng.random() < 0.002:
            self._turbidity_event += rng.uniform(5.0, 40.0)
        self._turbidity_event *= 0.95
        for name, sensor in self.sensors.items():
            extra = 0.0
            if name == "conductivity":
                extra = 1.5 * math.sin(2 * math.pi * t / TIDE)
            elif name == "turbidity":
                extra = self._turbidity_event
            _record(tree, sensor, sensor.value(t, rng, extra), t, changed)
        return changed

    def send_paths(self) -> list[Path]:
        return [s.value_path for s in self.sensors.values()] + [Path(3, 0, 9)]

    def execute(self, tree: ObjectTree, path: Path, t: float) -> list[Path] | None:
        if len(path) != 3 or path[2] != RESET_MIN_MAX:
            return None
        inst = tree.instance(path[0], path[1])
        if inst is None:
            return None
        value = inst.get(SENSOR_VALUE)
        if not isinstance(value, float):
            return None
        inst[MIN_MEASURED] = value
        inst[MAX_MEASURED] = value
        return [Path(path[0], path[1], MIN_MEASURED), Path(path[0], path[1], MAX_MEASURED)]


R = FishCameraResource


class FishCamera(Profile):
    """An underwater recognition camera: counts and measures fish (object 33001)."""

    kind = "camera"
    model_number = "CAM-100"
    device_type = "fish recognition camera"
    battery_drain_per_day = 4.0
    solar = True
    executables = ((CAMERA, int(FishCameraResource.RUN_INFERENCE)),)

    __slots__ = ("growth_per_day", "length0", "population", "t0", "visible")

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.population = rng.randrange(20_000, 60_000)
        self.visible = rng.uniform(30.0, 90.0)
        self.length0 = rng.uniform(30.0, 60.0)
        self.growth_per_day = rng.uniform(0.03, 0.08)
        self.t0 = 0.0

    def populate(self, tree: ObjectTree, t: float) -> None:
        self.t0 = t
        tree.add_instance(
            CAMERA,
            0,
            {
                int(R.RECOGNITION_MODEL_NAME): "salmon-detector",
                int(R.RECOGNITION_MODEL_VERSION): "2.3.0",
                int(R.FRAME_RATE): 5.0,
            },
        )
        self._infer(tree, t, [])

    def _infer(self, tree: ObjectTree, t: float, changed: list[Path]) -> list[Path]:
        rng = self.rng
        inst = tree.instance(CAMERA, 0)
        if inst is None:
            return changed
        day = diurnal(t, 13.0)  # light: best at 13:00
        quality = round(min(100.0, max(5.0, 70.0 + 25.0 * day + rng.gauss(0, 3))), 1)
        feeding = 1.0 + 0.5 * max(0.0, diurnal(t, 9.0)) + 0.5 * max(0.0, diurnal(t, 16.0))
        count = max(0, round(self.visible * feeding * quality / 100.0 + rng.gauss(0, 4)))
        length = self.length0 + self.growth_per_day * (t - self.t0) / DAY
        mean_length = round(max(1.0, length + rng.gauss(0, 0.4)), 1)
        weight = round(1.1 * length**3 / 100.0, 0)  # Fulton's condition factor K = 1.1
        values: dict[FishCameraResource, Value] = {
            R.FISH_COUNT: count,
            R.MEAN_FISH_LENGTH: mean_length,
            R.MEAN_FISH_WEIGHT: weight,
            R.BIOMASS_ESTIMATE: round(self.population * weight / 1000.0, 0),
            R.INFERENCE_CONFIDENCE: round(min(99.0, max(20.0, 60 + 0.35 * quality)), 1),
            R.IMAGE_QUALITY: quality,
            R.LAST_INFERENCE_TIME: sim_datetime(t),
        }
        for key, value in values.items():
            rid = int(key)
            if inst.get(rid) != value:
                inst[rid] = value
                changed.append(Path(CAMERA, 0, rid))
        return changed

    def step(self, tree: ObjectTree, t: float, stuck: bool) -> list[Path]:
        return [] if stuck else self._infer(tree, t, [])

    def send_paths(self) -> list[Path]:
        return [
            Path(CAMERA, 0, int(R.FISH_COUNT)),
            Path(CAMERA, 0, int(R.MEAN_FISH_LENGTH)),
            Path(CAMERA, 0, int(R.BIOMASS_ESTIMATE)),
            Path(3, 0, 9),
        ]

    def execute(self, tree: ObjectTree, path: Path, t: float) -> list[Path] | None:
        if path == Path(CAMERA, 0, int(R.RUN_INFERENCE)):
            return self._infer(tree, t, [])
        return None


PROFILES: dict[str, type[Profile]] = {
    WaterQualitySensor.kind: WaterQualitySensor,
    FishCamera.kind: FishCamera,
}
