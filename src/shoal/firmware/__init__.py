"""Firmware and recognition-model updates: repository, delivery, staged campaigns.

`FirmwareService` composes them for a node; `shoal.api.firmware.router` is the
HTTP API; `shoal.firmware.cli.watch` the `shoal campaign watch` progress view.
"""

from shoal.firmware.campaigns import (
    Campaign,
    CampaignDevice,
    CampaignManager,
    CampaignState,
    DeviceState,
    FirmwareFailure,
    Preview,
    Rollout,
    Targets,
    Window,
    window_open,
)
from shoal.firmware.delivery import (
    UPDATE_RESULTS,
    Delivery,
    DeliveryConfig,
    FileServer,
    Step,
    UpdateOutcome,
    Updater,
    describe_result,
)
from shoal.firmware.repository import (
    Package,
    PackageMeta,
    PackageRepository,
    PackageType,
    TooLarge,
)
from shoal.firmware.service import FirmwareConfig, FirmwareService
from shoal.firmware.versions import FirmwareVersion, VersionSpec, VersionSpecError, same_version

__all__ = [
    "UPDATE_RESULTS",
    "Campaign",
    "CampaignDevice",
    "CampaignManager",
    "CampaignState",
    "Delivery",
    "DeliveryConfig",
    "DeviceState",
    "FileServer",
    "FirmwareConfig",
    "FirmwareFailure",
    "FirmwareService",
    "FirmwareVersion",
    "Package",
    "PackageMeta",
    "PackageRepository",
    "PackageType",
    "Preview",
    "Rollout",
    "Step",
    "Targets",
    "TooLarge",
    "UpdateOutcome",
    "Updater",
    "VersionSpec",
    "VersionSpecError",
    "Window",
    "describe_result",
    "same_version",
    "window_open",
]
