"""The Alerts and Firmware pages in a real browser: a ShoalNode with alerting on,
simulated devices over real UDP, a firmware campaign started from the page whose
progress bar follows the live feed, and the alert its failed device raises,
acknowledged with a note, all without a reload.

Screenshots go to artifacts/screenshots/. Nothing asserts on timing: every wait
is a generous poll for a condition.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerting_fixtures import alerting_config
from shoal.firmware import DeliveryConfig, FirmwareConfig
from shoal.node import NodeConfig, ShoalNode
from shoal.sim import DeviceConfig, SimDevice, make_package
from test_ui import browser as browser  # the shared Chromium fixture
from test_ui import needs_browser, needs_playwright, shot

try:
    from playwright import async_api
except ImportError:  # pragma: no cover - depends on the environment
    async_api = None

TIMEOUT_MS = 45_000
FIRMWARE = FirmwareConfig(
    tick=0.2,
    delivery=DeliveryConfig(
        request_timeout=5.0,
        register_timeout=30.0,
        download_timeout=40.0,
        update_timeout=8.0,
        reboot_grace=8.0,
        verify_timeout=20.0,
        soak=0.5,
        rollback_soak=0.3,
        poll_interval=0.5,
    ),
)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ShoalNode]:
    node = ShoalNode(
        NodeConfig(
            coap_port=0,
            http_port=0,
            data_dir=str(tmp_path),
            secure=False,
            alerting=alerting_config(),
            firmware=FIRMWARE,
        )
    )
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
        await device.stop(deregister=False, timeout=2.0)


async def start_device(
    node: ShoalNode, devices: list[SimDevice], endpoint: str, **config: Any
) -> SimDevice:
    config.setdefault("firmware_update_delay", 0.3)
    config.setdefault("reboot_delay", 0.2)
    config.setdefault("retry_min", 0.3)
    config.setdefault("retry_max", 1.0)
    config.setdefault("sample_interval", 5.0)
    device = SimDevice(DeviceConfig(endpoint, **config), node.server.address)
    devices.append(device)
    assert await device.start(), f"{endpoint} did not register"
    return device


async def firmware_known(node: ShoalNode, *names: str, timeout: float = 45.0) -> None:
    """Wait until the inventory knows each device's firmware version."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            found = [await node.inventory.get_device(n) for n in names]
            if all(d.firmware_version for d in found):
                return
        except Exception:
            pass
        assert loop.time() < deadline, f"{names} not in the inventory"
        await asyncio.sleep(0.2)


@needs_browser
@needs_playwright
async def test_alerts_and_firmware_pages_in_a_real_browser(
    node: ShoalNode, devices: list[SimDevice], browser: Any
) -> None:
    expect = async_api.expect
    expect.set_options(timeout=TIMEOUT_MS)  # generous: the test machine is small and busy
    host, port = node.http_address
    base = f"http://{host}:{port}"
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Empty states first.
    await page.goto(base + "/alerts")
    await expect(page.get_by_text("All clear")).to_be_visible()
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Firmware").click()
    await expect(page.get_by_text("No packages yet")).to_be_visible()
    await expect(page.get_by_text("No campaigns yet")).to_be_visible()
    await shot(page, "20-firmware-empty")

    # A package and a draft campaign over the API: one device that updates, one that fails.
    await start_device(node, devices, "fw-ok-1")
    await start_device(node, devices, "fw-bad-1", firmware_outcome="failure")
    await firmware_known(node, "fw-ok-1", "fw-bad-1")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        resp = await http.post(
            "/api/v1/firmware/packages",
            params={
                "name": "wq-firmware",
                "version": "2.0.0",
                "package_type": "firmware",
                "device_kind": "sensor",
            },
            content=make_package("2.0.0", size=4096),
            headers={"content-type": "application/octet-stream"},
        )
        assert resp.status_code == 201, resp.text
        package = resp.json()
        resp = await http.post(
            "/api/v1/firmware/campaigns",
            json={
                "name": "Spring rollout",
                "package_id": package["id"],
                "targets": {"endpoints": ["fw-ok-1", "fw-bad-1"]},
                "rollout": {"canary": 0, "failure_threshold": 1.0, "max_concurrent": 2},
            },
        )
        assert resp.status_code == 201, resp.text
        campaign = resp.json()
    cid = campaign["id"]

    await page.reload()
    row = page.locator(f'[data-package-row="{package["id"]}"]')
    await expect(row).to_contain_text("wq-firmware")
    await expect(row).to_contain_text("2.0.0")
    await expect(row).to_contain_text(re.compile(r"\d\.\d KB"))
    progress = page.locator(f'.campaign-list [data-campaign="{cid}"]')
    await expect(progress.locator("[data-campaign-state]")).to_have_text("Draft")
    await shot(page, "21-firmware-draft")

    # Start it from the page: the bar follows the live feed to the end, no reload.
    marker = await page.evaluate("window.__noReload = 1")
    assert marker == 1
    await progress.get_by_role("button", name="Start Spring rollout").click()
    await expect(progress.locator("[data-campaign-state]")).to_have_text(
        "Completed", timeout=90_000
    )
    await expect(progress.locator("[data-progress-text]")).to_have_text("1 of 2 updated · 1 failed")
    bar = progress.get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-valuenow", "2")
    await expect(progress.locator("[data-progress-done]")).to_have_attribute(
        "style", re.compile(r"width: 50%")
    )
    for action in ("Pause", "Resume", "Cancel"):
        await expect(progress.get_by_role("button", name=f"{action} Spring rollout")).to_be_hidden()
    assert await page.evaluate("window.__noReload") == 1, "the page reloaded"
    await shot(page, "22-firmware-completed")

    # The campaign page: one row per device with its state.
    await page.get_by_role("link", name="Spring rollout").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Spring rollout")
    await expect(page.locator('[data-campaign-device="fw-ok-1"]')).to_contain_text("Succeeded")
    bad = page.locator('[data-campaign-device="fw-bad-1"]')
    await expect(bad).to_contain_text("failed")
    await shot(page, "23-campaign")

    # The failed update raised an alert: the overview counts it, the Alerts page lists it.
    await page.goto(base + "/")
    await expect(page.locator('[data-alert-count="high"]')).to_have_text("1 high")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Alerts").click()
    item = page.locator(".alert-item", has_text="fw-bad-1")
    await expect(item).to_contain_text("Firmware update failed")
    await expect(item.locator("[data-alert-state-badge]")).to_have_text("Open")
    await expect(item.get_by_role("link", name="fw-bad-1")).to_have_attribute(
        "href", "/devices/fw-bad-1"
    )
    await page.get_by_label("Severity", exact=True).select_option("critical")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.get_by_text("No alerts match")).to_be_visible()
    await page.get_by_role("link", name="Clear").click()
    await expect(item).to_be_visible()
    await shot(page, "24-alerts")

    # Acknowledge with a note, from the keyboard: the state changes without a reload.
    await page.evaluate("window.__noReload = 1")
    await item.get_by_role("button", name="Acknowledge").focus()
    await page.keyboard.press("Enter")
    dialog = page.locator("#alert-dialog")
    await expect(dialog).to_be_visible()
    await page.get_by_label("Note").fill("Diver checks the unit at 14:00")
    await shot(page, "25-alerts-acknowledge")
    await dialog.get_by_role("button", name="Acknowledge").click()
    await expect(dialog).to_be_hidden()
    item = page.locator(".alert-item", has_text="fw-bad-1")
    await expect(item.locator("[data-alert-state-badge]")).to_have_text("Acknowledged")
    await expect(item).to_contain_text("Diver checks the unit at 14:00")
    await expect(item.get_by_role("button", name="Acknowledge")).to_have_count(0)
    assert await page.evaluate("window.__noReload") == 1, "the page reloaded"
    await shot(page, "26-alerts-acknowledged")

    # The pages on a phone.
    phone = await browser.new_context(viewport={"width": 375, "height": 812})
    mobile = await phone.new_page()
    mobile.set_default_timeout(TIMEOUT_MS)
    mobile.on("pageerror", lambda exc: errors.append(str(exc)))
    for name, path in (
        ("27-phone-alerts", "/alerts"),
        ("28-phone-firmware", "/firmware"),
        ("29-phone-campaign", f"/firmware/campaigns/{cid}"),
        ("30-phone-overview", "/"),
    ):
        await mobile.goto(base + path)
        await expect(mobile.locator("main h1")).to_be_visible()
        width = await mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide on a 375px screen"
        await shot(mobile, name)
    await phone.close()
    await context.close()
    assert not errors, errors


async def test_alert_and_firmware_pages_answer_without_a_browser(node: ShoalNode) -> None:
    host, port = node.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=20) as client:
        for path in (
            "/alerts",
            "/alerts?state=all&severity=high",
            "/alerts?state=bogus&severity=bogus",
            "/firmware",
        ):
            r = await client.get(path)
            assert r.status_code == 200, (path, r.status_code)
            assert r.headers["content-type"].startswith("text/html"), path
        overview = await client.get("/")
        assert "Open alerts" in overview.text
        r = await client.get("/firmware/campaigns/999")
        assert r.status_code == 404 and "Not found" in r.text
