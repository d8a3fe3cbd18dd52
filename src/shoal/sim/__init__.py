"""Fleet simulator: many real LwM2M clients over real UDP, for tests, demos and load.

`SimDevice` is one client (water-quality sensor or fish camera) with its own
socket; `Fleet` starts thousands of them with bounded concurrency; `main` is the
`shoal simulate` command line.
"""

from shoal.sim.cli import main
from shoal.sim.device import DeviceConfig, SimDevice, SimStats
from shoal.sim.firmware import FirmwareOutcome, make_package, parse_package
from shoal.sim.fleet import FAULTS, Fleet, FleetConfig, apply_fault, bind_host_for
from shoal.sim.profiles import FishCamera, Profile, WaterQualitySensor
from shoal.sim.scheduler import Scheduler, SimClock

__all__ = [
    "FAULTS",
    "DeviceConfig",
    "FirmwareOutcome",
    "FishCamera",
    "Fleet",
    "FleetConfig",
    "Profile",
    "Scheduler",
    "SimClock",
    "SimDevice",
    "SimStats",
    "WaterQualitySensor",
    "apply_fault",
    "bind_host_for",
    "main",
    "make_package",
    "parse_package",
]
