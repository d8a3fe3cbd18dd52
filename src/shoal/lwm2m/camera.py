"""The Shoal fish camera: object 33001 in the private (vendor) range.

Object-recognition cameras report what they see in a pen — how many fish, how big,
how confident the model is — and which recognition model produced it, so a model
upgrade campaign can compare before and after and roll back a worse model. No OMA
or IPSO object carries these values, hence a private object.
"""

from __future__ import annotations

import enum

from shoal.lwm2m.model import ObjectModel, Operations, ResourceModel, ResourceType

FISH_CAMERA_OBJECT_ID = 33001

_R = Operations.READ
_RW = Operations.READ | Operations.WRITE


class FishCameraResource(enum.IntEnum):
    """Resource ids of the Fish Camera object, for code that reads or observes them."""

    FISH_COUNT = 0
    MEAN_FISH_LENGTH = 1
    RECOGNITION_MODEL_NAME = 2
    RECOGNITION_MODEL_VERSION = 3
    LAST_INFERENCE_TIME = 4
    FRAME_RATE = 5
    BIOMASS_ESTIMATE = 6
    INFERENCE_CONFIDENCE = 7
    MEAN_FISH_WEIGHT = 8
    IMAGE_QUALITY = 9
    RUN_INFERENCE = 10


def _resource(
    rid: FishCameraResource,
    name: str,
    type_: ResourceType,
    operations: Operations,
    description: str,
    *,
    mandatory: bool = False,
    range_: str = "",
    units: str = "",
) -> ResourceModel:
    return ResourceModel(
        id=int(rid),
        name=name,
        type=type_,
        operations=operations,
        mandatory=mandatory,
        range=range_,
        units=units,
        description=description,
    )


_RESOURCES = (
    _resource(
        FishCameraResource.FISH_COUNT,
        "Fish Count",
        ResourceType.INTEGER,
        _R,
        "Number of fish recognised in the field of view by the last inference.",
        mandatory=True,
        range_="0..2147483647",
    ),
    _resource(
        FishCameraResource.MEAN_FISH_LENGTH,
        "Mean Fish Length",
        ResourceType.FLOAT,
        _R,
        "Mean fork length of the fish measured by the last inference.",
        units="cm",
    ),
    _resource(
        FishCameraResource.RECOGNITION_MODEL_NAME,
        "Recognition Model Name",
        ResourceType.STRING,
        _R,
        "Name of the object-recognition model currently running on the camera.",
        mandatory=True,
    ),
    _resource(
        FishCameraResource.RECOGNITION_MODEL_VERSION,
        "Recognition Model Version",
        ResourceType.STRING,
        _R,
        "Version of the recognition model currently running; changes after a model upgrade.",
        mandatory=True,
    ),
    _resource(
        FishCameraResource.LAST_INFERENCE_TIME,
        "Last Inference Time",
        ResourceType.TIME,
        _R,
        "When the values of this instance were last computed.",
        mandatory=True,
    ),
    _resource(
        FishCameraResource.FRAME_RATE,
        "Frame Rate",
        ResourceType.FLOAT,
        _RW,
        "Frames analysed per second; lower it to save power and bandwidth.",
        units="fps",
    ),
    _resource(
        FishCameraResource.BIOMASS_ESTIMATE,
        "Biomass Estimate",
        ResourceType.FLOAT,
        _R,
        "Estimated total live weight of the fish in the enclosure.",
        units="kg",
    ),
    _resource(
        FishCameraResource.INFERENCE_CONFIDENCE,
        "Inference Confidence",
        ResourceType.FLOAT,
        _R,
        "Mean confidence of the detections in the last inference.",
        range_="0..100",
        units="%",
    ),
    _resource(
        FishCameraResource.MEAN_FISH_WEIGHT,
        "Mean Fish Weight",
        ResourceType.FLOAT,
        _R,
        "Mean weight of the fish estimated from their measured size.",
        units="g",
    ),
    _resource(
        FishCameraResource.IMAGE_QUALITY,
        "Image Quality",
        ResourceType.FLOAT,
        _R,
        "Usable fraction of the image; falls with lens fouling, turbid water or low light.",
        range_="0..100",
        units="%",
    ),
    _resource(
        FishCameraResource.RUN_INFERENCE,
        "Run Inference",
        ResourceType.NONE,
        Operations.EXECUTE,
        "Capture a frame and run the recognition model now, updating this instance.",
    ),
)

FISH_CAMERA = ObjectModel(
    id=FISH_CAMERA_OBJECT_ID,
    name="Fish Camera",
    resources={r.id: r for r in _RESOURCES},
    version="1.0",
    lwm2m_version="1.1",
    multiple=True,
    mandatory=False,
    urn=f"urn:oma:lwm2m:x:{FISH_CAMERA_OBJECT_ID}",
    description=(
        "An underwater object-recognition camera watching one enclosure: fish count, size "
        "and biomass from the last inference, and the recognition model that produced them."
    ),
)
