"""Which role each route needs, in one table.

Rules match the route's path template (`/api/v1/devices/{endpoint}/execute/...`)
and the method; the first match wins. What no rule names is readable by a viewer
and changeable only by an admin, so a router added later is closed to writes
until someone decides otherwise here.

    viewer    reads everything of its tenant (or of its farms)
    operator  device operations (Write, Execute, Create, Delete, Observe,
              Write-Attributes), manual assignment, alert acknowledgement,
              silences
    admin     credentials and bootstrap, firmware, users and tokens, the audit
              log, the inventory's structure (farms, enclosures), alert rules,
              channels, profiles; and LwM2M writes to the Security (0),
              Server (1) and Access Control (2) objects of a device
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shoal.auth.principal import SAFE_METHODS, Role

PUBLIC: Literal["public"] = "public"
Requirement = Role | Literal["public"]

_ANY: frozenset[str] = frozenset()
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    need: Requirement
    methods: frozenset[str] = _ANY  # empty: every method
    match: Literal["exact", "prefix", "contains"] = "prefix"

    def applies(self, method: str, template: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.match == "exact":
            return template == self.pattern
        if self.match == "contains":
            return self.pattern in template
        return template == self.pattern or template.startswith(self.pattern)


_DEVICE = "/api/v1/devices/{endpoint}"

RULES: tuple[Rule, ...] = (
    # scrapers and load balancers carry no session; counts and health only, no device data
    Rule("/healthz", PUBLIC, frozenset({"GET", "HEAD"}), "exact"),
    Rule("/readyz", PUBLIC, frozenset({"GET", "HEAD"}), "exact"),
    Rule("/metrics", PUBLIC, frozenset({"GET"}), "exact"),
    # signing in, and what devices fetch with a one-time token of their own
    Rule("/api/v1/auth/login", PUBLIC, frozenset({"POST"}), "exact"),
    Rule("/login", PUBLIC, frozenset({"GET", "POST"}), "exact"),
    Rule("/logout", PUBLIC, frozenset({"POST"}), "exact"),
    Rule("/api/v1/firmware/download/", PUBLIC, frozenset({"GET", "HEAD"})),
    # one's own session: anyone signed in
    Rule("/api/v1/auth/", Role.VIEWER),
    # admin only, reading included
    Rule("/api/v1/users", Role.ADMIN),
    Rule("/api/v1/tokens", Role.ADMIN),
    Rule("/api/v1/audit", Role.ADMIN),
    Rule("/api/v1/tenants", Role.ADMIN),
    Rule("/api/v1/security", Role.ADMIN),
    Rule("/api/v1/credentials", Role.ADMIN),
    Rule("/api/v1/bootstrap", Role.ADMIN),
    Rule("/api/v1/channels", Role.ADMIN),  # webhook URLs and secrets
    Rule("/credentials", Role.ADMIN, match="contains"),
    Rule("/access-control", Role.ADMIN, match="contains"),
    Rule("/bootstrap", Role.ADMIN, match="contains"),
    # operators: device operations, placement, alerts
    Rule(_DEVICE + "/data/", Role.OPERATOR, _UNSAFE),
    Rule(_DEVICE + "/execute/", Role.OPERATOR, _UNSAFE),
    Rule(_DEVICE + "/objects/", Role.OPERATOR, _UNSAFE),
    Rule(_DEVICE + "/attributes/", Role.OPERATOR, _UNSAFE),
    Rule(_DEVICE + "/observe/", Role.OPERATOR, _UNSAFE),
    Rule(_DEVICE, Role.OPERATOR, frozenset({"PATCH"}), "exact"),
    Rule("/api/v1/alerts/{alert_id}/acknowledge", Role.OPERATOR, frozenset({"POST"}), "exact"),
    Rule("/api/v1/alerts/{alert_id}/resolve", Role.OPERATOR, frozenset({"POST"}), "exact"),
    Rule("/api/v1/silences", Role.OPERATOR, _UNSAFE),
)

# LwM2M objects whose writes change who may talk to the device and how
PROTECTED_OBJECTS = frozenset({0, 1, 2})


def required(method: str, template: str, lwm2m_path: str | None = None) -> Requirement:
    """What `method` on the route `template` needs. `lwm2m_path` (the LwM2M path
    of a device operation) raises changes of objects 0-2, and any use of 0, to admin."""
    method = method.upper()
    for rule in RULES:
        if rule.applies(method, template):
            need = rule.need
            break
    else:
        need = Role.VIEWER if method in SAFE_METHODS else Role.ADMIN
    if lwm2m_path is not None and need != PUBLIC and template.startswith(_DEVICE + "/"):
        obj = _object_id(lwm2m_path)
        if obj in PROTECTED_OBJECTS and (method not in SAFE_METHODS or obj == 0):
            return Role.ADMIN  # object 0 holds keys: even reading it is an admin's
    return need


def _object_id(path: str) -> int | None:
    first = path.strip("/").split("/", 1)[0]
    return int(first) if first.isdigit() else None
