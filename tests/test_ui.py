"""The operator UI in a real browser: Playwright driving Debian's Chromium against a
ShoalNode on ephemeral ports, with simulated devices over real UDP.

Screenshots of every page go to artifacts/screenshots/ (git-ignored build artefacts).
Skipped, with the reason, when Chromium or Playwright's Python package is missing
(`scripts/install-browser` installs Chromium; never `playwright install`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from shoal.node import NodeConfig, ShoalNode
from shoal.sim import DeviceConfig, SimDevice

CHROMIUM = os.environ.get("SHOAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
TIMEOUT_MS = 20_000

needs_browser = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)),
    reason=f"no Chromium at {CHROMIUM}: run scripts/install-browser (Debian package 'chromium')",
)
try:
    from playwright import async_api
except ImportError:  # pragma: no cover - depends on the environment
    async_api = None
needs_playwright = pytest.mark.skipif(
    async_api is None, reason="Playwright's Python package is not installed"
)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ShoalNode]:
    node = ShoalNode(NodeConfig(coap_port=0, http_port=0, data_dir=str(tmp_path), secure=False))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def devices() -> AsyncIterator[list[SimDevice]]:
    started: list[SimDevice] = []
    yield started
    for device in started:
        await device.stop(timeout=2.0)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def start_device(
    node: ShoalNode, devices: list[SimDevice], endpoint: str, **config: Any
) -> SimDevice:
    device = SimDevice(DeviceConfig(endpoint, sample_interval=1.0, **config), node.server.address)
    devices.append(device)
    assert await device.start(), f"{endpoint} did not register"
    return device


@needs_browser
@needs_playwright
async def test_operator_ui_in_a_real_browser(
    node: ShoalNode, devices: list[SimDevice], browser: Any
) -> None:
    expect = async_api.expect
    host, port = node.http_address
    base = f"http://{host}:{port}"
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # An empty fleet says what to do first.
    await page.goto(base + "/")
    await expect(page.get_by_role("heading", name="No farms yet")).to_be_visible()
    await expect(page.locator("[data-live-state]")).to_have_attribute("data-state", "open")
    await shot(page, "01-overview-empty")

    # Create a farm; a value the API refuses shows its message at the field.
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Farms").click()
    form = page.locator("form.api-form")
    await form.get_by_label("Name").fill("Test Fjord")
    await form.get_by_label("Latitude").fill("123")
    await form.get_by_role("button", name="Create farm").click()
    await expect(form.locator('[data-field-error="latitude"]')).to_contain_text("90")
    await expect(form.get_by_label("Latitude")).to_have_attribute("aria-invalid", "true")
    await shot(page, "02-farms-validation")
    await form.get_by_label("Latitude").fill("60.4")
    await form.get_by_label("Longitude").fill("5.3")
    await form.get_by_label("Time zone").fill("Europe/Oslo")
    await form.get_by_role("button", name="Create farm").click()
    await expect(page).to_have_url(re.compile(r"/farms/\d+$"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Test Fjord")

    # Add an enclosure: a bad id is refused with the store's reason, then generated.
    form = page.locator("form.api-form", has=page.get_by_role("button", name="Add enclosure"))
    await form.get_by_label("Name").fill("Pen 7")
    await form.get_by_label("Species").fill("Atlantic salmon")
    await form.get_by_label("Enclosure id").fill("ENC-0000")
    await form.get_by_role("button", name="Add enclosure").click()
    await expect(form.locator("[data-form-error]")).to_contain_text("ENC-7K3M")
    await shot(page, "03-farm-validation")
    await form.get_by_label("Enclosure id").fill("")
    await form.get_by_role("button", name="Add enclosure").click()
    await expect(page).to_have_url(re.compile(r"/enclosures/\d+$"))
    enclosure_path = urlsplit(page.url).path
    code = (await page.locator(".enc-id-code").inner_text()).strip()
    assert re.fullmatch(r"ENC-[2-9A-HJKMNP-Z]{4}", code), code
    await expect(page.get_by_text("No devices here yet")).to_be_visible()
    await expect(page.locator("[data-live-state]")).to_have_attribute("data-state", "open")
    await shot(page, "04-enclosure-empty")

    # A device that sends the id appears on the open page, without a reload.
    sensor = f"{code}.SN0001"
    await start_device(node, devices, sensor, enclosure=code)
    camera = "ui-camera-1"
    await start_device(node, devices, camera, profile="camera", enclosure=code)
    await expect(page.locator(f'[data-device-row="{sensor}"]')).to_be_visible()
    await expect(page.locator(f'[data-device-row="{camera}"]')).to_be_visible()
    latest = page.locator('[data-metric-latest="/3303/0/5700"]')
    await expect(latest).to_have_text(re.compile(r"^-?\d+\.\d$"))
    await expect(page.locator("[data-chart-legend] li").first).to_be_visible()
    fish = page.locator(f'[data-camera="{camera}"] [data-path="/33001/0/0"]')
    await expect(fish).to_have_text(re.compile(r"^\d+$"))
    await expect(page.locator(f'[data-camera="{camera}"] [data-camera-model]')).to_have_text(
        re.compile(r"\d+\.\d+")
    )
    await shot(page, "05-enclosure-live")

    # The printable label: the id and its QR code.
    await page.get_by_role("link", name="Print label").click()
    await expect(page.locator(".label-code")).to_have_text(code)
    await expect(page.locator(".label-qr svg.qr")).to_be_visible()
    await shot(page, "06-enclosure-label")
    await page.go_back()

    # The device page: read a resource, named from the object model.
    await page.get_by_role("link", name=sensor).first.click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(sensor)
    await page.get_by_role("button", name="Read Manufacturer /3/0/0").click()
    await expect(page.locator('[data-value-for="/3/0/0"]')).to_have_text("Shoal Simulated Devices")
    await expect(page.locator("[data-op-status]")).to_contain_text("2.05")
    # Execute asks first; cancelling sends nothing.
    await page.get_by_role("button", name="Execute… Reboot /3/0/4").click()
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("/3/0/4")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(page.locator("[data-op-status]")).to_contain_text("cancelled")
    await expect(page.locator('[data-value-tile="/3303/0/5700"]')).to_be_visible()
    await shot(page, "07-device")

    # A device with an unknown id waits in the inbox and is placed from there.
    stray = "ui-stray-1"
    await start_device(node, devices, stray, enclosure="ENC-ZZZZ")
    await page.goto(base + "/devices?unassigned=true")
    item = page.locator(f'[data-inbox-item="{stray}"]')
    await expect(item).to_contain_text("ENC-ZZZZ")
    await item.get_by_role("button", name=re.compile("Assign")).click()
    await expect(item.locator("[data-form-error]")).to_have_text("Choose an enclosure first.")
    await shot(page, "08-devices-unassigned")
    await item.get_by_role("combobox").select_option(label=f"{code} · Pen 7")
    await item.get_by_role("button", name=re.compile("Assign")).click()
    await expect(item).to_have_count(0)
    await expect(page.get_by_text("Inbox empty")).to_be_visible()

    # The device list: search, filter and sort.
    await page.goto(base + "/devices")
    await expect(page.get_by_role("link", name=stray)).to_be_visible()
    await page.get_by_label("Search").fill("SN0001")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.get_by_role("link", name=sensor)).to_be_visible()
    await expect(page.get_by_role("link", name=camera)).to_have_count(0)
    await page.goto(base + "/devices?sort=endpoint&dir=desc")
    await expect(page.locator("tbody tr").first).to_contain_text(stray)
    await shot(page, "09-devices")

    # The overview: the enclosure's tile and the fleet counts.
    await page.goto(base + "/")
    await expect(page.get_by_role("link", name=re.compile(f"Pen 7.*{code}"))).to_be_visible()
    await expect(page.locator(".summary .count.s-online .count-n")).to_have_text("3")
    await shot(page, "10-overview")

    # The same pages on a phone.
    phone = await browser.new_context(viewport={"width": 375, "height": 812})
    mobile = await phone.new_page()
    mobile.set_default_timeout(TIMEOUT_MS)
    mobile.on("pageerror", lambda exc: errors.append(str(exc)))
    for name, path in (
        ("11-phone-overview", "/"),
        ("12-phone-enclosure", enclosure_path),
        ("13-phone-device", "/devices/" + sensor),
    ):
        await mobile.goto(base + path)
        await expect(mobile.locator("main h1")).to_be_visible()
        width = await mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide on a 375px screen"
        await shot(mobile, name)
    await phone.close()
    await context.close()

    assert not errors, errors


async def test_pages_answer_without_a_browser(node: ShoalNode, devices: list[SimDevice]) -> None:
    """Every page renders (HTML, not a JSON error) for a live fleet, and unknown
    things get a page that says so: checked without Chromium, so it always runs."""
    inv = node.inventory
    tenant = await inv.ensure_tenant(node.config.fleet.tenant)
    farm = await inv.create_farm(tenant.id, "Bergen <Fjord> & Co")
    pen = await inv.create_enclosure(farm.id, "Pen 1", code="ENC-7K3M")
    await start_device(node, devices, "ENC-7K3M.SN1")
    await start_device(node, devices, "cam-1", profile="camera", enclosure="ENC-7K3M")
    await start_device(node, devices, "lost-1", enclosure="ENC-ZZZZ")
    await node.fleet.drain()
    host, port = node.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=20) as client:
        for path in (
            "/",
            "/farms",
            f"/farms/{farm.id}",
            f"/enclosures/{pen.id}",
            f"/enclosures/{pen.id}/label",
            "/devices",
            "/devices?unassigned=true",
            "/devices?q=sn1&status=online&kind=sensor&sort=last_seen&dir=desc&page=x",
            f"/devices?farm={farm.id}&enclosure={pen.id}&sort=enclosure",
            "/devices/ENC-7K3M.SN1",
            "/devices/cam-1",
            "/devices/lost-1",
        ):
            r = await client.get(path)
            assert r.status_code == 200, (path, r.status_code)
            assert r.headers["content-type"].startswith("text/html"), path
            assert "Bergen &lt;Fjord&gt; &amp; Co" in r.text or path.startswith("/devices"), path
            assert "<Fjord>" not in r.text, f"{path} does not escape"
        inbox = await client.get("/devices?unassigned=true")
        assert "lost-1" in inbox.text and "ENC-ZZZZ" in inbox.text
        device = await client.get("/devices/ENC-7K3M.SN1")
        assert "Battery Level" in device.text and "Temperature" in device.text
        for path in ("/farms/999", "/enclosures/999", "/devices/nobody", "/enclosures/999/label"):
            r = await client.get(path)
            assert r.status_code == 404, path
            assert "Not found" in r.text, path
        chart = (await client.get(f"/enclosures/{pen.id}/telemetry.json?window=6h")).json()
        assert set(chart["metrics"]) == {"temperature", "oxygen", "ph", "salinity", "turbidity"}
        assert chart["metrics"]["temperature"]["unit"] == "°C"
        qr = await client.get(f"/enclosures/{pen.id}/qr.svg")
        assert qr.headers["content-type"].startswith("image/svg+xml") and "<svg" in qr.text
        css = await client.get("/static/shoal.css")
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]
