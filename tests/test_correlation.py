"""Enclosure correlation: first source wins, foreign or unknown ids never attach."""

from __future__ import annotations

from shoal.domain.correlation import (
    CorrelationConfig,
    EnclosureRef,
    Source,
    candidates,
    place,
)

PEN_A = EnclosureRef(1, "ENC-7K3M", tenant_id=10)
PEN_B = EnclosureRef(2, "ENC-2PQX", tenant_id=10)
OTHER_TENANT = EnclosureRef(3, "ENC-9TRW", tenant_id=20)
ENCLOSURES = {e.code: e for e in (PEN_A, PEN_B, OTHER_TENANT)}
CFG = CorrelationConfig()


def test_query_attribute_wins_over_later_sources() -> None:
    found = candidates(
        CFG, "ENC-2PQX.sn1", {"enc": "ENC-7K3M"}, provisioned_code="ENC-2PQX", manual_code="X"
    )
    assert [c.source for c in found] == [
        Source.QUERY_ATTRIBUTE,
        Source.ENDPOINT_PATTERN,
        Source.PROVISIONING,
        Source.MANUAL,
    ]
    placement = place(found, 10, ENCLOSURES.get)
    assert placement.enclosure == PEN_A
    assert placement.source is Source.QUERY_ATTRIBUTE


def test_endpoint_pattern_then_provisioning_then_resource_then_manual() -> None:
    assert place(candidates(CFG, "ENC-2PQX.sn1", {}), 10, ENCLOSURES.get).source is (
        Source.ENDPOINT_PATTERN
    )
    p = place(candidates(CFG, "probe-17", None, provisioned_code="ENC-2PQX"), 10, ENCLOSURES.get)
    assert (p.enclosure, p.source) == (PEN_B, Source.PROVISIONING)
    p = place(candidates(CFG, "probe-17", None, resource_value=" enc-7k3m "), 10, ENCLOSURES.get)
    assert (p.enclosure, p.source) == (PEN_A, Source.RESOURCE)
    p = place(candidates(CFG, "probe-17", None, manual_code="ENC-2PQX"), 10, ENCLOSURES.get)
    assert (p.enclosure, p.source) == (PEN_B, Source.MANUAL)


def test_configurable_attribute_and_pattern() -> None:
    cfg = CorrelationConfig(
        query_attribute="pen", endpoint_pattern=r"^farm1-(?P<enclosure>[A-Z0-9-]+)-"
    )
    found = candidates(cfg, "farm1-ENC-2PQX-0042", {"enc": "ENC-7K3M"})
    assert place(found, 10, ENCLOSURES.get).enclosure == PEN_B


def test_unknown_and_foreign_ids_leave_device_unassigned_with_reason() -> None:
    p = place(candidates(CFG, "probe", {"enc": "ENC-ZZZZ"}), 10, ENCLOSURES.get)
    assert not p.assigned
    assert p.reason is not None and "unknown enclosure" in p.reason
    # a later source that would match does not paper over the bad first one
    p = place(
        candidates(CFG, "probe", {"enc": "ENC-ZZZZ"}, provisioned_code="ENC-7K3M"),
        10,
        ENCLOSURES.get,
    )
    assert not p.assigned
    p = place(candidates(CFG, "probe", {"enc": "ENC-9TRW"}), 10, ENCLOSURES.get)
    assert not p.assigned
    assert p.reason is not None and "another tenant" in p.reason
    p = place(candidates(CFG, "probe", {}), 10, ENCLOSURES.get)
    assert not p.assigned and p.source is None
