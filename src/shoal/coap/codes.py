"""CoAP message types and codes (RFC 7252 section 12.1, RFC 7959, RFC 8132).

Codes are plain ints `class << 5 | detail` in messages (cheap to compare); the
IntEnum gives them names for people and logs.
"""

from __future__ import annotations

import enum


class Type(enum.IntEnum):
    CON = 0
    NON = 1
    ACK = 2
    RST = 3


CON, NON, ACK, RST = 0, 1, 2, 3


def _c(cls: int, detail: int) -> int:
    return cls << 5 | detail


class Code(enum.IntEnum):
    EMPTY = 0
    GET = 1
    POST = 2
    PUT = 3
    DELETE = 4
    FETCH = 5
    PATCH = 6
    IPATCH = 7

    CREATED = _c(2, 1)
    DELETED = _c(2, 2)
    VALID = _c(2, 3)
    CHANGED = _c(2, 4)
    CONTENT = _c(2, 5)
    CONTINUE = _c(2, 31)

    BAD_REQUEST = _c(4, 0)
    UNAUTHORIZED = _c(4, 1)
    BAD_OPTION = _c(4, 2)
    FORBIDDEN = _c(4, 3)
    NOT_FOUND = _c(4, 4)
    METHOD_NOT_ALLOWED = _c(4, 5)
    NOT_ACCEPTABLE = _c(4, 6)
    REQUEST_ENTITY_INCOMPLETE = _c(4, 8)
    CONFLICT = _c(4, 9)
    PRECONDITION_FAILED = _c(4, 12)
    REQUEST_ENTITY_TOO_LARGE = _c(4, 13)
    UNSUPPORTED_CONTENT_FORMAT = _c(4, 15)
    UNPROCESSABLE_ENTITY = _c(4, 22)
    TOO_MANY_REQUESTS = _c(4, 29)

    INTERNAL_SERVER_ERROR = _c(5, 0)
    NOT_IMPLEMENTED = _c(5, 1)
    BAD_GATEWAY = _c(5, 2)
    SERVICE_UNAVAILABLE = _c(5, 3)
    GATEWAY_TIMEOUT = _c(5, 4)
    PROXYING_NOT_SUPPORTED = _c(5, 5)


def code_class(code: int) -> int:
    return code >> 5


def is_request(code: int) -> bool:
    return 1 <= code <= 31


def is_response(code: int) -> bool:
    return 64 <= code <= 191


def is_success(code: int) -> bool:
    return code >> 5 == 2


def code_str(code: int) -> str:
    """`2.05 Content` style text for any code, known or not."""
    try:
        name = Code(code).name.replace("_", " ").title()
    except ValueError:
        name = "Unknown"
    return f"{code >> 5}.{code & 31:02d} {name}"
