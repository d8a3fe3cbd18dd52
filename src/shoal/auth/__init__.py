"""Users, roles, sessions, API tokens and the audit log.

- `AuthService` (service.py): sign in, sessions, tokens, the first admin.
- `AuthStore` (store.py): the tables in `shoal.store.auth_schema`.
- `shoal.auth.policy`: which role each route needs, in one table.
- `shoal.auth.http`: the app-wide `authorize` dependency, `tenant_of(request)`
  and the audit middleware.

Roles: viewer (read), operator (device operations, assignment, alert
acknowledgement), admin (credentials, firmware, users). Each user belongs to one
tenant and, optionally, to some of its farms only.
"""

from shoal.auth.principal import Principal, Role
from shoal.auth.service import (
    DEMO_PASSWORD,
    DEMO_USERNAME,
    AuthConfig,
    AuthService,
    LoginRefused,
    TooManyAttempts,
    Unauthenticated,
)
from shoal.auth.store import ApiToken, AuditEntry, AuthStore, User

__all__ = [
    "DEMO_PASSWORD",
    "DEMO_USERNAME",
    "ApiToken",
    "AuditEntry",
    "AuthConfig",
    "AuthService",
    "AuthStore",
    "LoginRefused",
    "Principal",
    "Role",
    "TooManyAttempts",
    "Unauthenticated",
    "User",
]
