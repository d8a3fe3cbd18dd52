"""Object model: DDF loader against the whole OMA registry, built-in table, registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.lwm2m.builtin_models import BUILTIN_MODELS
from shoal.lwm2m.camera import FISH_CAMERA, FISH_CAMERA_OBJECT_ID, FishCameraResource
from shoal.lwm2m.ddf import DdfError, load_ddf, load_directory, normalize_version
from shoal.lwm2m.model import ObjectModel, Operations, ResourceModel, ResourceType
from shoal.lwm2m.registry import ModelRegistry, default_registry

# ../shared beside the checkout; SHOAL_LWM2M_REGISTRY points elsewhere (a CI clone).
REGISTRY_DIR = Path(
    os.environ.get("SHOAL_LWM2M_REGISTRY")
    or Path(__file__).parents[2] / "shared" / "lwm2m-registry"
)


@pytest.fixture(scope="module")
def registry_dir() -> Path:
    if not REGISTRY_DIR.is_dir():
        pytest.skip(f"OMA LwM2M registry not found at {REGISTRY_DIR}")
    return REGISTRY_DIR


@pytest.fixture(scope="module")
def loaded(registry_dir: Path) -> dict[tuple[int, str], ObjectModel]:
    return {(m.id, m.version): m for m in load_directory(registry_dir)}


@pytest.fixture(scope="module")
def latest(loaded: dict[tuple[int, str], ObjectModel]) -> dict[int, ObjectModel]:
    return {m.id: m for m in ModelRegistry(loaded.values()).latest()}


def ddf(resources: str = "", **fields: str) -> bytes:
    """A minimal DDF document; `fields` override object-level elements."""
    obj = {
        "Name": "Test",
        "Description1": "A test object.",
        "ObjectID": "40000",
        "ObjectURN": "urn:oma:lwm2m:x:40000",
        "LWM2MVersion": "1.1",
        "ObjectVersion": "1.0",
        "MultipleInstances": "Multiple",
        "Mandatory": "Optional",
    } | fields
    elements = "".join(f"<{k}>{v}</{k}>" for k, v in obj.items() if v is not None)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<LWM2M><Object ObjectType="MODefinition">'
        f"{elements}<Resources>{resources}</Resources><Description2/></Object></LWM2M>"
    ).encode()


def item(rid: str, *, ops: str = "R", type_: str = "Integer", multiple: str = "Single") -> str:
    return (
        f'<Item ID="{rid}"><Name>R{rid}</Name><Operations>{ops}</Operations>'
        f"<MultipleInstances>{multiple}</MultipleInstances><Mandatory>Optional</Mandatory>"
        f"<Type>{type_}</Type><RangeEnumeration/><Units/><Description/></Item>"
    )


# -- the whole OMA registry -------------------------------------------------------------


def test_every_object_file_in_the_registry_loads(registry_dir: Path) -> None:
    object_files = [
        f
        for f in sorted(registry_dir.glob("*.xml"))
        if f.stem.isdigit()  # <id>.xml; the rest are Common.xml, DDF.xml, units
    ]
    assert len(object_files) > 300
    for file in object_files:
        models = load_ddf(file)
        assert len(models) == 1, file.name
        model = models[0]
        assert model.id == int(file.stem)
        assert model.name
        assert normalize_version(model.version) == model.version
        assert normalize_version(model.lwm2m_version) == model.lwm2m_version
        for rid, resource in model.resources.items():
            assert rid == resource.id
            if Operations.EXECUTE in resource.operations:
                assert resource.type is ResourceType.NONE, (file.name, rid)


def test_non_object_files_are_skipped(registry_dir: Path) -> None:
    for name in ("Common.xml", "DDF.xml", "LWM2M_senml_units.xml"):
        if (registry_dir / name).exists():
            assert load_ddf(registry_dir / name) == []
    models = load_directory(registry_dir)
    assert len(models) == len([f for f in registry_dir.glob("*.xml") if f.stem.isdigit()])
    assert [m.id for m in models] == sorted(m.id for m in models)


def test_device_error_code_is_a_multiple_integer(latest: dict[int, ObjectModel]) -> None:
    device = latest[3]
    assert device.name == "Device"
    assert device.multiple is False and device.mandatory is True
    error_code = device.resources[11]
    assert error_code.name == "Error Code"
    assert error_code.type is ResourceType.INTEGER
    assert error_code.multiple is True and error_code.mandatory is True
    assert error_code.operations == Operations.READ
    assert error_code.description.startswith("0=No error\n1=Low battery power\n")
    reboot = device.resources[4]
    assert reboot.type is ResourceType.NONE and reboot.operations == Operations.EXECUTE
    assert device.resources[9].units == "/100"  # Battery Level
    assert device.resources[7].units == ""  # Power Source Voltage: mV only in the text


def test_firmware_update_state(latest: dict[int, ObjectModel]) -> None:
    firmware = latest[5]
    state = firmware.resources[3]
    assert state.name == "State"
    assert state.type is ResourceType.INTEGER and state.range == "0..3"
    assert firmware.resources[0].operations == Operations.WRITE
    assert firmware.resources[0].type is ResourceType.OPAQUE
    assert firmware.resources[1].operations == Operations.READ | Operations.WRITE
    assert firmware.resources[2].type is ResourceType.NONE


def test_temperature_sensor_value_and_units(latest: dict[int, ObjectModel]) -> None:
    temperature = latest[3303]
    assert temperature.urn == "urn:oma:lwm2m:ext:3303:1.1"
    assert (temperature.version, temperature.lwm2m_version) == ("1.1", "1.0")
    value = temperature.resources[5700]
    assert value.name == "Sensor Value"
    assert value.type is ResourceType.FLOAT and value.mandatory
    assert value.units == ""  # IPSO sensors name their unit in resource 5701
    assert temperature.resources[5701].name == "Sensor Units"
    assert temperature.resources[5701].type is ResourceType.STRING
    assert temperature.resources[5605].type is ResourceType.NONE  # Reset Min and Max


def test_units_and_names_are_trimmed(latest: dict[int, ObjectModel]) -> None:
    assert latest[4].resources[2].units == "dBm"  # Radio Signal Strength
    assert latest[7].resources[4].units == "B"
    if 10250 in latest:  # "<Units>\n        </Units>" in the registry file
        assert all(r.units == "" for r in latest[10250].resources.values())
    for model in latest.values():
        for resource in model.resources.values():
            assert resource.units == resource.units.strip()
            assert resource.name == " ".join(resource.name.split())
    assert latest[0].resources[0].name == "LWM2M Server URI"  # "LWM2M  Server URI" in the file


def test_empty_type_on_a_readable_resource_becomes_string() -> None:
    (model,) = load_ddf(ddf(item("1", ops="R", type_="") + item("2", ops="E", type_="")))
    assert model.resources[1].type is ResourceType.STRING
    assert model.resources[2].type is ResourceType.NONE


# -- the built-in table must match the registry ----------------------------------------

BUILTIN_IDS = {0, 1, 2, 3, 4, 5, 6, 7, 9, 3300, 3303, 3316, 3319, 3320, 3325, 3326, 3327}


def test_builtin_table_matches_the_loader(
    loaded: dict[tuple[int, str], ObjectModel], latest: dict[int, ObjectModel]
) -> None:
    assert {m.id for m in BUILTIN_MODELS} == BUILTIN_IDS
    for model in BUILTIN_MODELS:
        assert loaded[(model.id, model.version)] == model, f"object {model.id} drifted"
    builtin = ModelRegistry(BUILTIN_MODELS)
    for object_id in BUILTIN_IDS:
        assert builtin.get(object_id) == latest[object_id]


def test_builtin_table_is_typed_values() -> None:
    for model in BUILTIN_MODELS:
        assert isinstance(model, ObjectModel)
        assert all(isinstance(r, ResourceModel) for r in model.resources.values())


# -- registry -------------------------------------------------------------------------


def _device(version: str, *extra: int) -> ObjectModel:
    resources = {r: ResourceModel(r, f"R{r}", ResourceType.STRING) for r in (0, 1, *extra)}
    return ObjectModel(3, "Device", resources, version=version)


def version_of(model: ObjectModel | None) -> str | None:
    return model.version if model is not None else None


def test_registry_picks_latest_or_exact_version() -> None:
    registry = ModelRegistry([_device("1.1", 20), _device("1.0"), _device("1.2", 20, 21)])
    assert version_of(registry.get(3)) == "1.2"
    assert version_of(registry.get(3, "1.0")) == "1.0"
    assert version_of(registry.get(3, "1.1")) == "1.1"
    assert version_of(registry.get(3, "1")) == "1.0"
    assert registry.get(3, "1.3") is None
    assert registry.get(3, "garbage") is None
    assert registry.get(4) is None
    assert registry.versions(3) == ["1.0", "1.1", "1.2"]
    assert registry.resource(3, 21) is not None
    assert registry.resource(3, 21, "1.0") is None
    assert registry.resource(3, 99) is None
    assert registry.resource(99, 0) is None
    assert 3 in registry and 4 not in registry
    assert len(registry) == 3
    assert [m.version for m in registry] == ["1.0", "1.1", "1.2"]


def test_registry_latest_uses_numeric_version_order() -> None:
    registry = ModelRegistry([_device("1.10"), _device("1.9"), _device("2.0")])
    assert version_of(registry.get(3)) == "2.0"
    registry = ModelRegistry([_device("1.10"), _device("1.9")])
    assert version_of(registry.get(3)) == "1.10"


def test_registry_compatible_version_stays_within_major() -> None:
    registry = ModelRegistry([_device("1.0"), _device("1.2"), _device("2.0")])
    assert version_of(registry.get_compatible(3, "1.1")) == "1.2"
    assert version_of(registry.get_compatible(3, "1.5")) == "1.2"
    assert version_of(registry.get_compatible(3, "2.3")) == "2.0"
    assert registry.get_compatible(3, "3.0") is None
    assert version_of(registry.get_compatible(3)) == "2.0"


def test_registry_add_replaces_same_version() -> None:
    registry = ModelRegistry([_device("1.0")])
    registry.add(_device("1.0", 20))
    assert len(registry) == 1
    assert registry.resource(3, 20) is not None


def test_default_registry_is_shared_and_read_only() -> None:
    registry = default_registry()
    assert registry is default_registry()
    assert {m.id for m in registry.latest()} == BUILTIN_IDS | {FISH_CAMERA_OBJECT_ID}
    with pytest.raises(TypeError):
        registry.add(_device("9.9"))
    mine = registry.copy()
    mine.add(_device("9.9"))
    assert version_of(mine.get(3)) == "9.9"
    assert version_of(registry.get(3)) == "1.2"


def test_from_directory_extends_the_builtin_models(tmp_path: Path) -> None:
    (tmp_path / "40000.xml").write_bytes(ddf(item("0")))
    (tmp_path / "notes.txt").write_text("not a DDF file")
    (tmp_path / "schema.xsd").write_text("<xs:schema/>")
    registry = ModelRegistry.from_directory(tmp_path)
    assert registry.get(40000) is not None
    assert registry.get(3) is not None
    assert registry.get(FISH_CAMERA_OBJECT_ID) is FISH_CAMERA
    only = ModelRegistry.from_directory(tmp_path, builtin=False)
    assert [m.id for m in only] == [40000]


# -- malformed and hostile XML ---------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<LWM2M><Object>",
        b"not xml at all",
        b"<LWM2M></lwm2m>",
        b"<LWM2M>&undefined;</LWM2M>",
    ],
)
def test_malformed_xml_raises_ddf_error(data: bytes) -> None:
    with pytest.raises(DdfError, match="malformed XML"):
        load_ddf(data)


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><!DOCTYPE LWM2M [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><LWM2M>&b;</LWM2M>',
        b'<!DOCTYPE LWM2M [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><LWM2M>&xxe;</LWM2M>',
        b'<!DOCTYPE LWM2M SYSTEM "http://example.invalid/lwm2m.dtd"><LWM2M/>',
        b"<!DOCTYPE LWM2M><LWM2M/>",
    ],
)
def test_dtds_and_entities_are_refused(data: bytes) -> None:
    with pytest.raises(DdfError, match="DTD"):
        load_ddf(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (ddf(ObjectID="x"), "ObjectID"),
        (ddf(ObjectID="65535"), "ObjectID"),
        (ddf(item("z")), "resource ID"),
        (ddf(item("1") + item("1")), "defined twice"),
        (ddf(item("1", ops="RX")), "Operations"),
        (ddf(item("1", multiple="Many")), "MultipleInstances"),
        (ddf(Mandatory="Sometimes"), "Mandatory"),
        (ddf(ObjectVersion="v1"), "ObjectVersion"),
    ],
)
def test_bad_definitions_raise_ddf_error(data: bytes, message: str) -> None:
    with pytest.raises(DdfError, match=message):
        load_ddf(data)


def test_ddf_error_is_a_value_error_and_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "41000.xml"
    broken.write_bytes(b"<LWM2M>")
    with pytest.raises(ValueError, match=r"41000\.xml"):
        load_directory(tmp_path)
    with pytest.raises(DdfError, match="cannot read"):
        load_ddf(tmp_path / "missing.xml")
    with pytest.raises(DdfError, match="not a directory"):
        load_directory(tmp_path / "missing")


def test_defaults_and_tolerated_spellings() -> None:
    data = ddf(
        item("0", ops="", type_="unsigned integer") + item("1", ops=" RW ", type_=" Float "),
        ObjectVersion="",
        LWM2MVersion="",
        ObjectURN="urn:oma:lwm2m:x:40000:2.1",
        MultipleInstances="Single",
        Mandatory="",
    )
    (model,) = load_ddf(b"\xef\xbb\xbf" + data)  # the registry has files with a BOM
    assert model.version == "2.1"  # from the URN when ObjectVersion is missing
    assert model.lwm2m_version == "1.0"
    assert model.multiple is False and model.mandatory is False
    assert model.resources[0].type is ResourceType.UNSIGNED_INTEGER
    assert model.resources[0].operations == Operations.NONE
    assert model.resources[1].type is ResourceType.FLOAT
    assert model.resources[1].operations == Operations.READ | Operations.WRITE
    (plain,) = load_ddf(ddf(ObjectVersion="", ObjectURN="urn:oma:lwm2m:x:40000"))
    assert plain.version == "1.0"


def test_namespaced_and_non_object_documents() -> None:
    data = ddf(item("0")).replace(b"<LWM2M>", b'<LWM2M xmlns:xsi="urn:x" xsi:foo="1">')
    assert len(load_ddf(data)) == 1
    assert load_ddf(b"<DDFList><Item/></DDFList>") == []
    common = b'<LWM2M><Object ObjectType="CommonResources"><Resources/></Object></LWM2M>'
    assert load_ddf(common) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.0", "1.0"), (" 1.1 ", "1.1"), ("1", "1.0"), ("01.02", "1.2"), ("", None), ("a", None)],
)
def test_normalize_version(text: str, expected: str | None) -> None:
    assert normalize_version(text) == expected


# -- the fish camera ------------------------------------------------------------------


def test_fish_camera_object() -> None:
    camera = default_registry().get(FISH_CAMERA_OBJECT_ID)
    assert camera is FISH_CAMERA
    assert camera.id == 33001 and camera.name == "Fish Camera"
    assert camera.urn == "urn:oma:lwm2m:x:33001"
    r = camera.resources
    expected = {
        0: ("Fish Count", ResourceType.INTEGER, Operations.READ, ""),
        1: ("Mean Fish Length", ResourceType.FLOAT, Operations.READ, "cm"),
        2: ("Recognition Model Name", ResourceType.STRING, Operations.READ, ""),
        3: ("Recognition Model Version", ResourceType.STRING, Operations.READ, ""),
        4: ("Last Inference Time", ResourceType.TIME, Operations.READ, ""),
        5: ("Frame Rate", ResourceType.FLOAT, Operations.READ | Operations.WRITE, "fps"),
        6: ("Biomass Estimate", ResourceType.FLOAT, Operations.READ, "kg"),
        7: ("Inference Confidence", ResourceType.FLOAT, Operations.READ, "%"),
    }
    for rid, (name, type_, ops, units) in expected.items():
        assert (r[rid].name, r[rid].type, r[rid].operations, r[rid].units) == (
            name,
            type_,
            ops,
            units,
        )
    assert set(r) == {int(x) for x in FishCameraResource}
    run = r[FishCameraResource.RUN_INFERENCE]
    assert run.type is ResourceType.NONE and run.operations == Operations.EXECUTE


def test_fish_camera_is_in_the_private_range() -> None:
    # OMNA: 10241..26240 are vendor objects registered with OMA, 32769..42768 private.
    assert 32769 <= FISH_CAMERA.id <= 42768
