"""What of the live feed a principal may see.

Feed items name a device (`endpoint`) and sometimes its farm; the device's tenant
and farm come from the inventory, cached for a short while and shared by every
watcher of the app, so a busy fleet costs a lookup per device per `ttl`, not one
per item.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from shoal.auth.principal import Principal
from shoal.store import Inventory, StoreError


class DevicePlaces:
    """endpoint -> (tenant id, farm id), from the inventory, briefly cached.
    A device the inventory does not know yet is (None, None): it has no tenant."""

    def __init__(
        self,
        inventory: Inventory,
        *,
        ttl: float = 30.0,
        unknown_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 200_000,
    ) -> None:
        self.inventory = inventory
        self.ttl = ttl
        self.unknown_ttl = unknown_ttl
        self.clock = clock
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, int | None, int | None]] = {}

    async def place(self, endpoint: str) -> tuple[int | None, int | None]:
        now = self.clock()
        hit = self._cache.get(endpoint)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        try:
            device = await self.inventory.get_device(endpoint)
        except StoreError:
            self._remember(endpoint, now + self.unknown_ttl, None, None)
            return None, None
        farm_id = None
        if device.enclosure_id is not None:
            try:
                farm_id = (await self.inventory.get_enclosure(device.enclosure_id)).farm_id
            except StoreError:
                farm_id = None
        self._remember(endpoint, now + self.ttl, device.tenant_id, farm_id)
        return device.tenant_id, farm_id

    def _remember(self, endpoint: str, until: float, tenant: int | None, farm: int | None) -> None:
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[endpoint] = (until, tenant, farm)


async def feed_item_visible(
    principal: Principal, places: DevicePlaces, item: Mapping[str, Any]
) -> bool:
    """Items about a device follow the device's tenant and farm (a device of no
    tenant yet is everyone's to claim, as in the inventory); items about no
    device follow their own `tenant_id` and `farm_id`, when they carry them."""
    if principal.local:
        return True
    endpoint = item.get("endpoint")
    if endpoint is None:
        tenant = item.get("tenant_id")
        if tenant is not None and tenant != principal.tenant_id:
            return False
        return not principal.farm_scoped or principal.sees_farm(item.get("farm_id"))
    tenant_id, farm_id = await places.place(str(endpoint))
    if tenant_id is not None and tenant_id != principal.tenant_id:
        return False
    return principal.sees_farm(farm_id)
