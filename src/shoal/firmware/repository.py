"""The package repository: firmware images and recognition models, kept for rollback.

Bytes are content-addressed on disk under `<data dir>/firmware/sha256/ab/abcd...`
(written to a temporary file while hashing, size-limited as they stream in,
then renamed into place), metadata lives in SQL. The same bytes are stored once:
uploading them again is a conflict naming the existing package. Versions are
compared as versions (`shoal.firmware.versions`); `applies_to` says which
versions a package may be applied over.

Old versions stay until an operator deletes them, and the repository refuses to
delete a package a campaign uses or a rollback may still need.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shoal.firmware.versions import FirmwareVersion, VersionSpec, VersionSpecError
from shoal.store import Conflict, Database, DeviceKind, Invalid, NotFound
from shoal.store.firmware_schema import (
    FirmwareCampaignDeviceRow,
    FirmwareCampaignRow,
    FirmwarePackageRow,
)
from shoal.store.schema import utcnow

DEFAULT_MAX_SIZE = 64 * 1024 * 1024
_CHUNK = 64 * 1024


class PackageType(enum.StrEnum):
    FIRMWARE = "firmware"
    MODEL = "model"  # a camera's object-recognition model


class TooLarge(Invalid):
    """An upload over the repository's size limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"package larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class PackageMeta:
    """What the uploader says about a package."""

    name: str
    version: str
    package_type: PackageType = PackageType.FIRMWARE
    device_kind: DeviceKind | None = None
    models: Sequence[str] = ()
    applies_to: str | None = None
    signature: str | None = None
    notes: str = ""
    sha256: str | None = None  # when given, the upload must match it
    tenant_id: int | None = None

    def checked(self) -> PackageMeta:
        name = self.name.strip()
        version = self.version.strip()
        if not name or len(name) > 200:
            raise Invalid("package name must be 1-200 characters")
        if not version or len(version) > 100 or any(c.isspace() for c in version):
            raise Invalid("package version must be 1-100 characters without spaces")
        try:
            spec = VersionSpec.parse(self.applies_to)
        except VersionSpecError as exc:
            raise Invalid(f"applies_to: {exc}") from None
        digest = self.sha256.strip().lower() if self.sha256 else None
        if digest is not None and (
            len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise Invalid("sha256 must be 64 hex digits")
        models = tuple(dict.fromkeys(m.strip() for m in self.models if m.strip()))
        return PackageMeta(
            name,
            version,
            PackageType(self.package_type),
            DeviceKind(self.device_kind) if self.device_kind else None,
            models,
            spec.text or None,
            self.signature or None,
            self.notes or "",
            digest,
            self.tenant_id,
        )


@dataclass(frozen=True, slots=True)
class Package:
    id: int
    name: str
    version: str
    package_type: PackageType
    device_kind: DeviceKind | None
    models: tuple[str, ...]
    applies_to: str | None
    sha256: str
    size: int
    signature: str | None
    notes: str
    created_at: datetime
    tenant_id: int | None = field(default=None)

    def fits(self, kind: str | None, model: str | None) -> str | None:
        """Why this package is not for a device of that kind and model (None: it is)."""
        if self.device_kind is not None and kind and kind != self.device_kind:
            return f"package is for {self.device_kind} devices, not {kind}"
        if self.models and (model or "") not in self.models:
            return f"package is for models {', '.join(self.models)}, not {model or 'unknown'}"
        return None

    def applies_over(self, version: str | None) -> bool:
        return VersionSpec.parse(self.applies_to).matches(version)


def _package(row: FirmwarePackageRow) -> Package:
    return Package(
        row.id,
        row.name,
        row.version,
        PackageType(row.package_type),
        DeviceKind(row.device_kind) if row.device_kind else None,
        tuple(row.models or ()),
        row.applies_to,
        row.sha256,
        row.size,
        row.signature,
        row.notes,
        row.created_at,
        row.tenant_id,
    )


class PackageRepository:
    """Upload, find, serve and delete packages."""

    def __init__(
        self,
        db: Database,
        root: str | Path,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.db = db
        self.root = Path(root)
        self.max_size = max_size
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0

    # -- storage ---------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    async def add(
        self, meta: PackageMeta, chunks: AsyncIterator[bytes] | Iterable[bytes]
    ) -> Package:
        """Store a package streamed in `chunks` (bytes never held whole in memory)."""
        meta = meta.checked()
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"upload-{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in _aiter(chunks):
                    size += len(chunk)
                    if size > self.max_size:
                        raise TooLarge(self.max_size)
                    digest.update(chunk)
                    f.write(chunk)
                await asyncio.to_thread(_sync, f)
            if size == 0:
                raise Invalid("empty package")
            sha = digest.hexdigest()
            if meta.sha256 is not None and meta.sha256 != sha:
                raise Invalid(f"upload has sha256 {sha}, not the {meta.sha256} announced")
            existing = await self._by_sha(sha)
            if existing is not None:
                raise Conflict(
                    f"these bytes are already package {existing.id} "
                    f"({existing.name} {existing.version})"
                )
            final = self.blob_path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        row = FirmwarePackageRow(
            tenant_id=meta.tenant_id,
            name=meta.name,
            version=meta.version,
            package_type=str(meta.package_type),
            device_kind=str(meta.device_kind) if meta.device_kind else None,
            models=list(meta.models) or None,
            applies_to=meta.applies_to,
            sha256=sha,
            size=size,
            signature=meta.signature,
            notes=meta.notes,
            created_at=utcnow(),
        )
        try:
            async with self.db.session() as s:
                s.add(row)
                await s.flush()
                return _package(row)
        except IntegrityError:
            if await self._by_sha(sha) is None:
                self.blob_path(sha).unlink(missing_ok=True)
            raise Conflict(
                f"{meta.package_type} {meta.name} {meta.version} is already in the repository"
            ) from None

    async def add_bytes(self, meta: PackageMeta, data: bytes) -> Package:
        return await self.add(meta, [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)])

    async def _by_sha(self, sha: str) -> Package | None:
        async with self.db.session(readonly=True) as s:
            row = await s.scalar(select(FirmwarePackageRow).where(FirmwarePackageRow.sha256 == sha))
            return None if row is None else _package(row)

    # -- queries ---------------------------------------------------------------------

    async def get(self, package_id: int) -> Package:
        async with self.db.session(readonly=True) as s:
            row = await s.get(FirmwarePackageRow, package_id)
            if row is None:
                raise NotFound(f"no package {package_id}")
            return _package(row)

    async def list_packages(
        self,
        *,
        tenant_id: int | None = None,
        package_type: PackageType | None = None,
        name: str | None = None,
        device_kind: DeviceKind | None = None,
    ) -> list[Package]:
        """Newest version first within each (type, name)."""
        stmt = select(FirmwarePackageRow)
        if tenant_id is not None:
            stmt = stmt.where(
                (FirmwarePackageRow.tenant_id == tenant_id) | FirmwarePackageRow.tenant_id.is_(None)
            )
        if package_type is not None:
            stmt = stmt.where(FirmwarePackageRow.package_type == str(package_type))
        if name is not None:
            stmt = stmt.where(FirmwarePackageRow.name == name)
        if device_kind is not None:
            stmt = stmt.where(
                (FirmwarePackageRow.device_kind == str(device_kind))
                | FirmwarePackageRow.device_kind.is_(None)
            )
        async with self.db.session(readonly=True) as s:
            packages = [_package(r) for r in await s.scalars(stmt)]
        packages.sort(key=lambda p: (p.package_type, p.name))
        return _newest_first(packages)

    async def find_version(
        self,
        package_type: PackageType,
        version: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        model: str | None = None,
        tenant_id: int | None = None,
    ) -> Package | None:
        """The package of that type and version (equal as versions) for such a device;
        one with the same name is preferred."""
        candidates = [
            p
            for p in await self.list_packages(tenant_id=tenant_id, package_type=package_type)
            if _equal(p.version, version) and p.fits(kind, model) is None
        ]
        candidates.sort(key=lambda p: (p.name != name, -p.id))
        return candidates[0] if candidates else None

    # -- content ---------------------------------------------------------------------

    async def content(self, package: Package) -> bytes:
        """The bytes, from a small in-memory cache (devices pull the same image)."""
        data = self._cache.get(package.sha256)
        if data is not None:
            self._cache.move_to_end(package.sha256)
            return data
        data = await asyncio.to_thread(self.blob_path(package.sha256).read_bytes)
        if hashlib.sha256(data).hexdigest() != package.sha256:
            raise Invalid(f"stored package {package.id} is damaged (sha256 mismatch)")
        self._remember(package.sha256, data)
        return data

    def cached(self, sha256: str) -> bytes | None:
        return self._cache.get(sha256)

    def _remember(self, sha: str, data: bytes) -> None:
        if len(data) > self._cache_bytes:
            return
        self._cache[sha] = data
        self._cached += len(data)
        while self._cached > self._cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    # -- deletion --------------------------------------------------------------------

    async def delete(self, package_id: int, *, force: bool = False) -> None:
        """Delete metadata and bytes. Refused while a campaign uses the package, and
        (unless `force`) while devices updated from it may need it for rollback."""
        async with self.db.session() as s:
            row = await s.get(FirmwarePackageRow, package_id)
            if row is None:
                raise NotFound(f"no package {package_id}")
            used = await s.scalar(
                select(func.count())
                .select_from(FirmwareCampaignRow)
                .where(FirmwareCampaignRow.package_id == package_id)
            )
            if used:
                raise Conflict(f"package {package_id} is used by {used} campaign(s)")
            if not force:
                await self._check_rollback_need(s, row)
            sha = row.sha256
            await s.delete(row)
        self._cache.pop(sha, None)
        await asyncio.to_thread(self.blob_path(sha).unlink, True)

    async def _check_rollback_need(self, s: AsyncSession, row: FirmwarePackageRow) -> None:
        stmt = (
            select(FirmwareCampaignDeviceRow.from_version)
            .join(
                FirmwareCampaignRow, FirmwareCampaignRow.id == FirmwareCampaignDeviceRow.campaign_id
            )
            .join(FirmwarePackageRow, FirmwarePackageRow.id == FirmwareCampaignRow.package_id)
            .where(
                FirmwareCampaignDeviceRow.state == "succeeded",
                FirmwarePackageRow.package_type == row.package_type,
                FirmwareCampaignDeviceRow.from_version.isnot(None),
            )
            .distinct()
        )
        for (version,) in (await s.execute(stmt)).all():
            if _equal(version, row.version):
                raise Conflict(
                    f"devices were updated from {row.version}: it is kept for their rollback "
                    "(delete with force to drop it anyway)"
                )


def _equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return FirmwareVersion(a) == FirmwareVersion(b)
    except ValueError:
        return a == b


def _newest_first(packages: list[Package]) -> list[Package]:
    def key(p: Package) -> tuple[str, str, FirmwareVersion]:
        return (p.package_type, p.name, FirmwareVersion(p.version))

    out: list[Package] = []
    groups: dict[tuple[str, str], list[Package]] = {}
    for p in packages:
        groups.setdefault((p.package_type, p.name), []).append(p)
    for group_key in sorted(groups):
        out.extend(sorted(groups[group_key], key=key, reverse=True))
    return out


def _sync(f: object) -> None:
    flush = getattr(f, "flush", None)
    if flush is not None:
        flush()
    fileno = getattr(f, "fileno", None)
    if fileno is not None:
        os.fsync(fileno())


async def _aiter(chunks: AsyncIterator[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(chunks, AsyncIterator):
        async for c in chunks:
            if c:
                yield c
    else:
        for c in chunks:
            if c:
                yield c
