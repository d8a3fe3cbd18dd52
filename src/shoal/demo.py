"""The demo tenant: two farms with enclosures, so `shoal demo` shows a live farm."""

from __future__ import annotations

from shoal.store import EnclosureKind, Inventory, StoreError

DEMO_FARMS = (
    (
        "Nordfjord Salmon",
        "Hardangerfjord, Norway",
        60.1,
        6.0,
        "Europe/Oslo",
        (
            ("Pen 1", EnclosureKind.CAGE, "Atlantic salmon", "ENC-7K3M"),
            ("Pen 2", EnclosureKind.CAGE, "Atlantic salmon", "ENC-2PQX"),
            ("Pen 3", EnclosureKind.CAGE, "Atlantic salmon", "ENC-9TRW"),
        ),
    ),
    (
        "Lakeside Hatchery",
        "Lake Vänern, Sweden",
        58.9,
        13.3,
        "Europe/Stockholm",
        (
            ("Tank A", EnclosureKind.TANK, "Arctic char", "ENC-4HVB"),
            ("Raceway 1", EnclosureKind.RACEWAY, "Rainbow trout", "ENC-6NCD"),
        ),
    ),
)


async def seed_demo_farms(inventory: Inventory, tenant: str) -> list[str]:
    """Create the demo farms once (idempotent); returns the enclosure codes."""
    t = await inventory.ensure_tenant(tenant)
    existing = {f.name: f for f in await inventory.list_farms(tenant_id=t.id)}
    codes: list[str] = []
    for name, location, lat, lon, tz, enclosures in DEMO_FARMS:
        farm = existing.get(name)
        if farm is None:
            farm = await inventory.create_farm(
                t.id, name, location=location, latitude=lat, longitude=lon, time_zone=tz
            )
        for enc_name, kind, species, code in enclosures:
            codes.append(code)
            try:
                await inventory.get_enclosure_by_code(code)
            except StoreError:
                await inventory.create_enclosure(
                    farm.id, enc_name, kind=kind, species=species, code=code
                )
    return codes
