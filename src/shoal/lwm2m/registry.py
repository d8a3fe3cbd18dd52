"""Object models by id and version, as the server looks them up for each device.

A device declares which objects it has and, since LwM2M 1.1, which version of each
(`</3>;ver=1.1`). Codecs and validation must use that version's definition; when a
device declares none, the newest known definition is the best guess.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator

from shoal.lwm2m.builtin_models import BUILTIN_MODELS
from shoal.lwm2m.camera import FISH_CAMERA
from shoal.lwm2m.ddf import load_directory, normalize_version
from shoal.lwm2m.model import ObjectModel, ResourceModel

__all__ = ["ModelRegistry", "default_registry"]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class ModelRegistry:
    """ObjectModels keyed by (object id, object version); the newest version wins lookups
    that name no version. Adding a model with a known (id, version) replaces it, so a
    vendor's DDF file can correct a built-in definition.
    """

    __slots__ = ("_frozen", "_latest", "_models")

    def __init__(self, models: Iterable[ObjectModel] = ()) -> None:
        self._models: dict[int, dict[str, ObjectModel]] = {}
        self._latest: dict[int, ObjectModel] = {}
        self._frozen = False
        self.extend(models)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str], *, builtin: bool = True) -> ModelRegistry:
        """The built-in models (unless `builtin=False`) extended with a folder of DDF files."""
        registry = default_registry().copy() if builtin else cls()
        registry.extend(load_directory(path))
        return registry

    def add(self, model: ObjectModel) -> None:
        if self._frozen:
            raise TypeError("this model registry is shared and read-only; use .copy() to extend")
        version = normalize_version(model.version)
        if version is None:
            raise ValueError(f"object {model.id}: invalid version {model.version!r}")
        versions = self._models.setdefault(model.id, {})
        versions[version] = model
        newest = max(versions, key=_version_key)
        self._latest[model.id] = versions[newest]

    def extend(self, models: Iterable[ObjectModel]) -> None:
        for model in models:
            self.add(model)

    def get(self, object_id: int, version: str | None = None) -> ObjectModel | None:
        """The newest model of an object, or exactly `version` (None if that one is unknown)."""
        if version is None:
            return self._latest.get(object_id)
        normalized = normalize_version(version)
        if normalized is None:
            return None
        return self._models.get(object_id, {}).get(normalized)

    def get_compatible(self, object_id: int, version: str | None = None) -> ObjectModel | None:
        """Like `get`, but an unknown version falls back within the same major version.

        Minor versions of an object only add optional resources, so a newer minor
        decodes an older device's data; failing that, the newest older minor is used.
        Another major version is incompatible and gives None.
        """
        model = self.get(object_id, version)
        if model is not None or version is None:
            return model
        wanted = normalize_version(version)
        versions = self._models.get(object_id)
        if wanted is None or not versions:
            return None
        wanted_key = _version_key(wanted)
        same_major = sorted(
            (_version_key(v), v) for v in versions if _version_key(v)[0] == wanted_key[0]
        )
        newer = [v for key, v in same_major if key > wanted_key]
        if newer:
            return versions[newer[0]]
        return versions[same_major[-1][1]] if same_major else None

    def resource(
        self, object_id: int, resource_id: int, version: str | None = None
    ) -> ResourceModel | None:
        model = self.get(object_id, version)
        return model.resources.get(resource_id) if model is not None else None

    def versions(self, object_id: int) -> list[str]:
        """Known versions of an object, oldest first."""
        return sorted(self._models.get(object_id, {}), key=_version_key)

    def latest(self) -> list[ObjectModel]:
        """The newest model of every object, by object id."""
        return [self._latest[i] for i in sorted(self._latest)]

    def copy(self) -> ModelRegistry:
        """A mutable copy (models are immutable and shared)."""
        return ModelRegistry(m for versions in self._models.values() for m in versions.values())

    def freeze(self) -> ModelRegistry:
        """Make this registry read-only, for sharing; returns self."""
        self._frozen = True
        return self

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._latest

    def __iter__(self) -> Iterator[ObjectModel]:
        """Every model, every version, by object id then version."""
        for object_id in sorted(self._models):
            versions = self._models[object_id]
            for v in sorted(versions, key=_version_key):
                yield versions[v]

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())

    def __repr__(self) -> str:
        return f"<ModelRegistry {len(self._latest)} objects, {len(self)} versions>"


@functools.cache
def default_registry() -> ModelRegistry:
    """The built-in OMA/IPSO models and the Shoal fish camera, shared and read-only."""
    return ModelRegistry((*BUILTIN_MODELS, FISH_CAMERA)).freeze()
