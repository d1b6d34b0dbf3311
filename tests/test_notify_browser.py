"""The service worker's push handling in the real Chromium: a push message is delivered to the
web app's service worker through the DevTools protocol (``ServiceWorker.deliverPushMessage``: a
headless browser has no push service to receive one from), and the notification it shows is
read back with ``registration.getNotifications()``.

Playwright's synchronous API runs in a worker thread; the daemon runs under Trio.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from sidecode_trio.config import DaemonConfig

from helpers import chromium_args, chromium_or_skip, running_daemon

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

PAYLOAD = {
    "v": 1, "kind": "approval", "session_id": "s1", "request_id": "r1",
    "title": "Approve: Run `npm test`", "body": "Fix the flaky test — project-x",
    "tag": "sidecode-s1", "url": "/app/#s=s1", "count": 1, "at": 1795240062.0,
    "actions": [{"action": "allow", "title": "Allow"}, {"action": "deny", "title": "Deny"}],
}  # fmt: skip
NOTIFICATIONS = """async () => (await (await navigator.serviceWorker.ready).getNotifications())
    .map((n) => ({title: n.title, body: n.body, tag: n.tag, data: n.data,
                  actions: n.actions.map((a) => a.action)}))"""


def show_a_push(chromium: str, url: str) -> list[dict[str, Any]]:
    args = chromium_args()
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            context = browser.new_context()
            context.grant_permissions(["notifications"], origin=url)
            page = context.new_page()
            page.set_default_timeout(30_000)
            cdp = context.new_cdp_session(page)
            registrations: list[str] = []
            cdp.on(
                "ServiceWorker.workerRegistrationUpdated",
                lambda event: registrations.extend(
                    r["registrationId"] for r in event["registrations"] if not r["isDeleted"]
                ),
            )
            cdp.send("ServiceWorker.enable")
            page.goto(f"{url}/app/")
            page.evaluate("() => navigator.serviceWorker.ready.then(() => true)")
            deadline = time.monotonic() + 15
            while not registrations and time.monotonic() < deadline:
                page.wait_for_timeout(50)  # CDP events arrive while Playwright waits
            assert registrations, "no service worker registration was reported"
            cdp.send(
                "ServiceWorker.deliverPushMessage",
                {"origin": url, "registrationId": registrations[-1], "data": json.dumps(PAYLOAD)},
            )
            page.wait_for_function(f"({NOTIFICATIONS})().then((list) => list.length > 0)")
            shown: list[dict[str, Any]] = page.evaluate(NOTIFICATIONS)
            return shown
        finally:
            browser.close()


async def test_the_service_worker_shows_an_approval_with_its_buttons(
    make_config: Callable[..., DaemonConfig],
) -> None:
    chromium = chromium_or_skip()
    with trio.fail_after(60):
        async with running_daemon(make_config()) as owner:
            shown = await trio.to_thread.run_sync(show_a_push, chromium, owner.handle.url)
    [note] = shown
    assert note["title"] == "Approve: Run `npm test`" and note["tag"] == "sidecode-s1"
    assert note["body"] == "Fix the flaky test — project-x"
    assert note["actions"] == ["allow", "deny"]  # Chromium's maxActions is 2
    assert note["data"]["request_id"] == "r1"
