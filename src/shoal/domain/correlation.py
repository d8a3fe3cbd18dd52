"""Which enclosure a device belongs to, from what it tells us.

Devices cannot all send the same thing, so several sources are tried in a fixed
order and the first that yields an enclosure id wins (DESIGN.md, "Enclosure
correlation"): the registration query attribute, the endpoint name pattern, the
provisioning record, a resource read from the device, the operator's manual
assignment. The source used is recorded. An id that names no enclosure of the
device's tenant never attaches: the device goes to the unassigned list with the
reason.

This module is pure: lookups are passed in, so it is tested without a database.
(`Source` is the store's `CorrelationSource`: one enum, persisted as is.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shoal.lwm2m.path import Path
from shoal.store.schema import CorrelationSource as Source


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    # 1. `POST /rd?ep=...&enc=ENC-7K3M`
    query_attribute: str = "enc"
    # 2. e.g. r"^(?P<enclosure>ENC-[A-Z2-9]{4})\." for `ENC-7K3M.sn12345`
    endpoint_pattern: str | None = r"^(?P<enclosure>ENC-[A-Z0-9]{4})[._:-]"
    # 4. a resource holding the enclosure id, read after registration
    resource: Path | None = None


@dataclass(frozen=True, slots=True)
class EnclosureRef:
    """The part of an enclosure correlation needs: its id, code and owner."""

    id: int
    code: str
    tenant_id: int


@dataclass(frozen=True, slots=True)
class Candidate:
    code: str
    source: Source


@dataclass(frozen=True, slots=True)
class Placement:
    """The outcome: an enclosure and the source that named it, or why not."""

    enclosure: EnclosureRef | None
    source: Source | None
    reason: str | None = None  # set when the device is left unassigned

    @property
    def assigned(self) -> bool:
        return self.enclosure is not None


def candidates(
    config: CorrelationConfig,
    endpoint: str,
    attributes: Mapping[str, str] | None,
    provisioned_code: str | None = None,
    resource_value: str | None = None,
    manual_code: str | None = None,
) -> list[Candidate]:
    """Every enclosure id the device's facts name, in priority order."""
    found: list[Candidate] = []
    if attributes:
        code = attributes.get(config.query_attribute)
        if code:
            found.append(Candidate(code.strip(), Source.QUERY_ATTRIBUTE))
    if config.endpoint_pattern:
        m = _compiled(config.endpoint_pattern).search(endpoint)
        if m is not None and m.groupdict().get("enclosure"):
            found.append(Candidate(m.group("enclosure"), Source.ENDPOINT_PATTERN))
    if provisioned_code:
        found.append(Candidate(provisioned_code, Source.PROVISIONING))
    if resource_value:
        found.append(Candidate(resource_value.strip(), Source.RESOURCE))
    if manual_code:
        found.append(Candidate(manual_code, Source.MANUAL))
    return found


def place(
    found: list[Candidate],
    tenant_id: int | None,
    lookup: Callable[[str], EnclosureRef | None],
) -> Placement:
    """The first candidate wins; if it names no enclosure of the tenant, say why.

    A wrong id from the first source is not papered over by a later source: a
    device that sends a bad id is misconfigured and an operator must know.
    """
    if not found:
        return Placement(None, None, "the device named no enclosure")
    first = found[0]
    enclosure = lookup(normalize(first.code))
    if enclosure is None:
        return Placement(
            None, first.source, f"unknown enclosure id {first.code!r} ({first.source})"
        )
    if tenant_id is not None and enclosure.tenant_id != tenant_id:
        return Placement(
            None,
            first.source,
            f"enclosure {first.code!r} belongs to another tenant ({first.source})",
        )
    return Placement(enclosure, first.source)


def normalize(code: str) -> str:
    """Operators type ids by hand: accept `enc-7k3m` and ` ENC-7K3M `."""
    return code.strip().upper()


_patterns: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    rx = _patterns.get(pattern)
    if rx is None:
        rx = _patterns[pattern] = re.compile(pattern)
    return rx
