"""Who is asking: roles and the principal a request acts as."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.store.auth_schema import UserRole as Role

__all__ = ["SAFE_METHODS", "Principal", "Role", "rank"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def rank(role: Role) -> int:
    """Roles are ordered: viewer < operator < admin."""
    return _RANK[Role(role)]


@dataclass(frozen=True, slots=True)
class Principal:
    """The user (or machine token, or the node itself with auth off) behind a
    request: its tenant, its role and, optionally, the only farms it may see."""

    tenant_id: int
    role: Role
    username: str
    via: str  # "session", "token", or "local" when the node runs without auth
    user_id: int | None = None
    farm_ids: frozenset[int] | None = None  # None: every farm of the tenant
    token_id: int | None = None
    session_id: str | None = None  # the session's digest, never its secret
    csrf_token: str | None = None

    def allows(self, role: Role) -> bool:
        return rank(self.role) >= rank(role)

    def sees_farm(self, farm_id: int | None) -> bool:
        """A farm-scoped principal sees only its farms, and nothing outside farms."""
        if self.farm_ids is None:
            return True
        return farm_id is not None and farm_id in self.farm_ids

    @property
    def farm_scoped(self) -> bool:
        return self.farm_ids is not None

    @property
    def local(self) -> bool:
        """The node's own principal when authentication is off."""
        return self.via == "local"
