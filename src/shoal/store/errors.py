"""Domain errors the store raises instead of driver exceptions.

The API maps them to HTTP status codes (NotFound 404, Conflict 409, Invalid 422)
so no layer above the store ever has to know about SQLAlchemy or a driver.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class NotFound(StoreError):
    """The thing named does not exist."""


class Conflict(StoreError):
    """The change clashes with stored state: a duplicate name or code, or a delete
    of something other rows still need (an enclosure that holds devices)."""


class Invalid(StoreError):
    """The input is malformed: a bad enclosure code, time zone, coordinate, limit."""
