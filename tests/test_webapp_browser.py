"""The web app in a real browser: Playwright drives the system Chromium against a daemon on
loopback that runs the fake CLI.

The daemon's app is loaded from ``http://127.0.0.1:<port>/app/`` (loopback HTTP is a secure
context, so WebCrypto, service workers and WebTransport all work). Playwright's synchronous API
runs in a worker thread (it keeps its own event loop there) while the daemon runs under Trio;
checks of the daemon's side go back through ``trio.from_thread``. Chromium is Debian's package
(``nox -s tests`` installs it under CI); Playwright's own browsers are never downloaded. Without
Chromium the tests skip, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecode_trio.config import DaemonConfig

from helpers import Client, chromium_args, chromium_or_skip, running_daemon

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS = Path(__file__).parent.parent / "docs"
PHONE = {"width": 390, "height": 844}  # an iPhone 14-sized viewport, in CSS pixels
STEP_TIMEOUT_MS = 30_000  # a deadline per step, not a behaviour: loaded 2-core CI
# docs/phone-*.png (the README's screenshots) are rewritten only on request, so that a test run on
# a machine with other fonts leaves the checkout clean: SIDECODE_UPDATE_SCREENSHOTS=1 pytest ...
UPDATE_DOCS = os.environ.get("SIDECODE_UPDATE_SCREENSHOTS") == "1"


@contextmanager
def phone_page(chromium: str, problems: list[str], scale: int = 3, **options: Any) -> Iterator[Any]:
    """A fresh browser profile with one phone-sized page; page errors and CSP refusals are
    collected in ``problems``. ``options`` go to the browser context."""
    args = chromium_args()
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            context = browser.new_context(
                viewport=PHONE, device_scale_factor=scale, is_mobile=True, has_touch=True, **options
            )
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

            def on_console(message: Any) -> None:
                if message.type == "error" and "Refused to" in message.text:
                    problems.append(f"console: {message.text}")

            page.on("console", on_console)
            yield page
        finally:
            browser.close()


def pair(page: Any, link: str, fingerprint: str) -> None:
    page.goto(link)
    page.wait_for_selector("#pair-view:not([hidden])")
    assert page.text_content("#pair-fingerprint") == fingerprint
    page.fill("#pair-name", "Test phone")
    page.click("#pair-button")
    page.wait_for_selector("body[data-paired='true']")
    assert "#pair=" not in page.url  # the secret is gone from the address bar and history
    page.wait_for_selector("#conn[data-state='live']")


def start_session(page: Any, folder: Path, prompt: str) -> str:
    page.click("#menu")
    page.click("#new-session")
    page.wait_for_selector("#new-view:not([hidden])")
    page.click(f"#folders button[data-path='{folder}']")
    page.wait_for_function(
        "(p) => document.getElementById('folder-path').textContent === p", arg=str(folder)
    )
    page.fill("#new-prompt", prompt)
    page.select_option("#new-mode", "default")
    page.click("#start")
    page.wait_for_selector("#session-view:not([hidden]) #transcript")
    session_id: str = page.evaluate("() => window.sidecode.view.id")
    return session_id


def send(page: Any, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


# The text of the transcript after the last user message: the current turn's answer.
CURRENT_TURN = """() => {
  const nodes = [...document.getElementById('transcript').children];
  const last = nodes.map((n) => n.classList.contains('user')).lastIndexOf(true);
  return nodes.slice(last + 1).map((n) => n.innerText).join('\\n');
}"""


def turn_text(page: Any) -> str:
    return str(page.evaluate(CURRENT_TURN))


def wait_text(page: Any, text: str) -> None:
    """Wait until the current turn's answer shows ``text``."""
    page.wait_for_function(f"(t) => ({CURRENT_TURN})().includes(t)", arg=text)


def turn_ends(page: Any) -> int:
    return int(page.evaluate("() => document.querySelectorAll('#transcript .turn-end').length"))


PARTIAL_WATCH = """() => {
  window.partialSeen = false;
  const partial = () => [...document.querySelectorAll('#transcript .assistant.streaming')]
    .some((n) => n.innerText.includes('tick 3 ') && !n.innerText.includes('tick 39'));
  const observer = new MutationObserver(() => {
    if (partial()) { window.partialSeen = true; observer.disconnect(); }
  });
  observer.observe(document.getElementById('transcript'),
                   { childList: true, subtree: true, characterData: true });
}"""


def ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\btick (\d+)\b", text)]


def wait_turn_ends(page: Any, count: int) -> None:
    page.wait_for_function(
        "(n) => document.querySelectorAll('#transcript .turn-end').length >= n", arg=count
    )


def transcript_stats(page: Any) -> dict[str, int]:
    data = page.evaluate("() => ({...document.getElementById('transcript').dataset})")
    return {key: int(value) for key, value in data.items()}


def dom_items(page: Any) -> int:
    return int(page.evaluate("() => document.getElementById('transcript').children.length"))


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), animations="disabled")


async def run_in_browser(scenario: Callable[[], None]) -> None:
    with trio.fail_after(240):  # each step has its own 15 s limit inside the browser
        await trio.to_thread.run_sync(scenario)


async def pairing_link(owner: Client, scope: str) -> tuple[str, str]:
    offer = (await owner.http.post("/v1/pairings", json={"scope": scope})).json()
    return offer["web_link"], offer["payload"]["fp"]


async def test_phone_pairs_starts_a_session_approves_denies_interrupts_and_reloads(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    (work_dir / "notes.txt").write_text("hello world\n")
    problems: list[str] = []
    async with running_daemon(make_config()) as owner:
        link, fingerprint = await pairing_link(owner, "admin")

        def snapshot(session_id: str) -> dict[str, Any]:
            return trio.from_thread.run(owner.snapshot, session_id)

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                pair(page, link, fingerprint)
                # prefer WebTransport: the pinned certificate works from the pairing payload
                assert page.get_attribute("#conn", "data-transport") == "webtransport"

                # start a session in a folder; its first answer streams in
                session_id = start_session(page, work_dir, "Hello from the phone")
                wait_text(page, "You said: Hello from the phone")
                wait_turn_ends(page, 1)
                page.click("#menu")
                row = page.wait_for_selector(f"#sessions a[data-session='{session_id}']")
                assert "idle" in row.inner_text()
                page.click("#scrim", position={"x": PHONE["width"] - 20, "y": 400})

                # token by token: part of the text shows while the block is still streaming
                # (seen by a MutationObserver at every change of the transcript, not by polling,
                # which a page starved for the turn's 2 s on a loaded machine could miss)
                page.evaluate(PARTIAL_WATCH)
                send(page, "[[slow:40]]")
                page.wait_for_function("() => window.partialSeen")
                wait_turn_ends(page, 2)
                assert ticks(turn_text(page)) == list(range(40))

                # approve an edit from the card: the card shows the diff, then the tool row
                send(page, "[[edit:notes.txt|hello world|goodbye world]]")
                card = page.wait_for_selector("#permissions .card")
                assert "goodbye world" in card.inner_text()  # the diff, before it runs
                row = f"#sessions a[data-session='{session_id}'] [data-status='needs-approval']"
                page.wait_for_selector(row, state="attached")  # the drawer says so too
                assert page.text_content("#session-status") == "⚠ needs approval"
                assert card.query_selector(".dl.ins") is not None
                screenshot(page, "phone.png")
                card.query_selector("[data-action='allow']").click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 3)
                tool = page.wait_for_selector("#transcript .tool .diff")
                added = tool.query_selector_all(".dl.ins")
                assert any("goodbye world" in line.inner_text() for line in added)
                assert (work_dir / "notes.txt").read_text() == "goodbye world\n"
                screenshot(page, "phone-diff.png")

                # a tool row opens into its details (fetched from the tools route)
                page.click("#transcript .tool summary")
                page.wait_for_selector("#transcript .tool .tool-body .code")

                # deny a command: nothing runs
                send(page, "[[bash:echo no > denied.txt]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='deny']").click()
                card.query_selector("[data-action='deny-confirm']").click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 4)
                assert not (work_dir / "denied.txt").exists()

                # answer a question (AskUserQuestion)
                send(page, "[[ask:Which colour?|Red,Blue]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-option='Blue']").click()
                card.query_selector("[data-action='answer']").click()
                wait_turn_ends(page, 5)
                wait_text(page, "Blue")

                # interrupt a long turn
                send(page, "[[slow:400]]")
                wait_text(page, "tick 2 ")
                page.click("#interrupt")
                page.wait_for_selector("#transcript .turn-end.interrupted")

                # reload mid-turn: the transcript continues, nothing twice
                send(page, "[[slow:60]]")
                wait_text(page, "tick 5 ")
                page.reload()
                page.wait_for_selector("#conn[data-state='live']")
                page.wait_for_selector("#transcript .msg.user")
                wait_turn_ends(page, 7)
                text = turn_text(page)
                assert ticks(text) == list(range(60)), text  # each once, in order
                snap = snapshot(session_id)
                assert dom_items(page) == len(snap["items"])
                # the browser's fold (snapshot, then events) is the daemon's, item for item
                assert page.evaluate("() => window.sidecode.view.state.items") == snap["items"]
                users = page.evaluate(
                    "() => [...document.querySelectorAll('#transcript .msg.user')]"
                    ".map((n) => n.dataset.id)"
                )
                assert len(users) == len(set(users)) == 7
                assert transcript_stats(page)["duplicates"] == 0
                assert transcript_stats(page)["cursor"] == snap["cursor"]

                # the WebTransport connection drops mid-turn: it resumes exactly, no snapshot
                send(page, "[[slow:30]]")
                wait_text(page, "tick 3 ")
                page.evaluate("() => window.sidecode.client.drop()")
                wait_turn_ends(page, 8)
                assert ticks(turn_text(page)) == list(range(30))
                stats = transcript_stats(page)
                assert stats["snapshots"] == 1 and stats["duplicates"] == 0  # the reload's one
                page.wait_for_selector("#conn[data-state='live'][data-transport='webtransport']")

                # switch the permission mode and the model from the session header
                page.select_option("#mode", "acceptEdits")
                page.wait_for_function(
                    "() => document.getElementById('mode').value === 'acceptEdits'"
                    " && window.sidecode.view.state.info.permission_mode === 'acceptEdits'"
                )
                page.select_option("#model", "sonnet")
                page.wait_for_function("() => window.sidecode.view.state.info.model === 'sonnet'")

                page.click("#menu")
                screenshot(page, "phone-drawer.png")

        await run_in_browser(scenario)
    assert problems == []


async def test_over_sse_a_dropped_connection_resumes_exactly_and_an_image_is_attached(
    make_config: Callable[..., DaemonConfig], work_dir: Path, tmp_path: Path
) -> None:
    chromium = chromium_or_skip()
    image = tmp_path / "dot.png"
    image.write_bytes((DOCS.parent / "sidecode_trio/web/static/icons/icon-192.png").read_bytes())
    problems: list[str] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:  # no WebTransport: HTTP
        link, fingerprint = await pairing_link(owner, "chat")
        session_id = (await owner.create(work_dir, "first"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                pair(page, link, fingerprint)
                assert page.get_attribute("#conn", "data-transport") == "sse"
                assert page.get_attribute("#conn", "data-path") == "direct"
                assert page.text_content("#conn-label") == "live · direct"  # words, not a dot
                page.goto(link.split("#")[0] + f"#s={session_id}")
                wait_text(page, "You said: first")

                # the connection drops mid-turn; the app resumes from its (epoch, cursor)
                send(page, "[[slow:60]]")
                wait_text(page, "tick 5 ")
                page.evaluate("() => window.sidecode.client.drop()")
                wait_turn_ends(page, 2)
                text = turn_text(page)
                assert ticks(text) == list(range(60)), text
                stats = transcript_stats(page)
                assert stats["snapshots"] == 1 and stats["duplicates"] == 0

                # markdown with a highlighted code block (the fake model echoes the text)
                send(page, "**bold** and `inline`\n\n```python\nanswer = 42\n```")
                wait_turn_ends(page, 3)
                reply = page.locator("#transcript .msg.assistant").last
                assert reply.locator("strong").inner_text() == "bold"
                assert reply.locator("pre code.hljs .hljs-number").inner_text() == "42"

                # a 'chat' device is offered only the modes it may choose, and can come back
                # from plan (it used to be offered acceptEdits, auto and bypass, then refused)
                options = page.eval_on_selector_all(
                    "#mode option", "(os) => os.map((o) => o.value)"
                )
                assert options == ["plan", "dontAsk", "default"]
                page.select_option("#mode", "plan")
                wait_mode(page, "plan")
                page.select_option("#mode", "default")
                wait_mode(page, "default")
                assert page.is_hidden("#session-error")

                # a Write card offers no 'Always: accept edits' a chat device could not apply
                send(page, "[[write:chat.txt|hi]]")
                card = page.wait_for_selector("#permissions .card")
                assert card.query_selector("[data-action='allow-always']") is None
                card.query_selector("[data-action='allow']").click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 4)

                # allow always: the suggested rule is applied with the answer
                send(page, "[[bash:echo hi > always.txt]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='allow-always']").click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 5)

                # attach an image to a message
                page.set_input_files("#attach-input", str(image))
                page.wait_for_selector("#attachments .thumb img")
                send(page, "what is this")
                # the sent image shows as a thumbnail (the daemon keeps only its hash)
                page.wait_for_selector("#transcript .msg.user .sent-images img.sent-thumb[src]")
                wait_turn_ends(page, 6)

                # offline start: the service worker serves the shell, the app says it is offline
                # and catches up when the network is back
                page.evaluate("() => navigator.serviceWorker.ready")
                page.context.set_offline(True)
                page.reload()
                page.wait_for_selector("#conn[data-state='offline']")
                assert page.evaluate("() => !!navigator.serviceWorker.controller")
                page.context.set_offline(False)
                page.wait_for_selector("#conn[data-state='live']")
                wait_turn_ends(page, 6)

        await run_in_browser(scenario)
        snap = await owner.snapshot(session_id)
        async with owner.events(session_id) as events:
            resolved = await events.until(
                lambda e: e.type == "permission.resolved" and bool(e.body["applied"])
            )
    assert resolved.body["outcome"] == "allowed"
    assert (work_dir / "always.txt").read_text() == "hi\n"
    images = [item["images"] for item in snap["items"] if item["type"] == "user"]
    assert images[-1] and images[-1][0]["media_type"] == "image/png"
    assert problems == []


async def test_over_https_once_the_certificate_is_accepted(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    """The phone's real path: the daemon's own HTTPS certificate, which the user accepted
    (``ignore_https_errors``). Requests are bound to that certificate; WebTransport pins it."""
    chromium = chromium_or_skip()
    problems: list[str] = []
    async with running_daemon(make_config(https=True)) as owner:
        assert owner.handle.url.startswith("https://")
        link, fingerprint = await pairing_link(owner, "chat")
        assert link.startswith(owner.handle.url.rstrip("/") + "/app/#pair=")
        session_id = (await owner.create(work_dir, "over https"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems, ignore_https_errors=True) as page:
                pair(page, link, fingerprint)
                assert page.get_attribute("#conn", "data-transport") == "webtransport"
                page.goto(link.split("#")[0] + f"#s={session_id}")
                wait_text(page, "You said: over https")
                send(page, "[[bash:echo tls > tls.txt]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='allow']").click()
                wait_turn_ends(page, 2)

        await run_in_browser(scenario)
    assert (work_dir / "tls.txt").read_text() == "tls\n"
    assert problems == []


def open_session(page: Any, link: str, session_id: str) -> None:
    page.goto(link.split("#")[0] + f"#s={session_id}")
    # a locator, not wait_for_selector: an element handle would keep the old view alive
    page.locator("#session-view:not([hidden]) #transcript").wait_for()


def wait_mode(page: Any, mode: str) -> None:
    page.wait_for_function(
        "(m) => window.sidecode.view.state.info?.permission_mode === m", arg=mode
    )


PLAN = "[[plan:# Refactor the parser\\n\\n1. **Split** the module\\n2. Add tests]]"


async def test_a_plan_is_shown_as_markdown_with_the_choices_the_cli_offers(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "admin")
        session_id = (await owner.create(work_dir, "hi", permission_mode="plan"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                pair(page, link, fingerprint)
                open_session(page, link, session_id)
                wait_turn_ends(page, 1)

                # keep planning, saying what to change: the plan is refused, plan mode stays
                send(page, PLAN)
                card = page.wait_for_selector("#permissions .plan-card")
                assert card.query_selector(".plan h1").inner_text() == "Refactor the parser"
                assert card.query_selector(".plan li strong").inner_text() == "Split"
                buttons = card.query_selector_all("button")
                actions = [b.get_attribute("data-action") for b in buttons]
                assert actions == ["plan-accept-edits", "plan-default", "plan-keep-planning"]
                assert "{" not in card.inner_text()  # no raw JSON
                card.query_selector("textarea.reason").fill("also update the docs")
                card.query_selector("[data-action='plan-keep-planning']").click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 2)
                wait_mode(page, "plan")

                # approve and accept edits: the session leaves plan for acceptEdits
                send(page, PLAN)
                card = page.wait_for_selector("#permissions .plan-card")
                screenshot(page, "phone-plan.png")
                card.query_selector("[data-action='plan-accept-edits']").click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 3)
                wait_mode(page, "acceptEdits")
                # the transcript's tool row shows the plan too, rendered
                page.wait_for_selector("#transcript .tool .plan h1")

        await run_in_browser(scenario)
        snap = await owner.snapshot(session_id)
    denied = [i for i in snap["items"] if i["type"] == "tool" and i["name"] == "ExitPlanMode"]
    assert "also update the docs" in denied[0]["output"]
    assert problems == []


async def test_controls_follow_the_device_scope_and_the_daemon_remote_modes(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    config = make_config(quic_port=-1, remote_modes=("default", "plan", "acceptEdits"))
    async with running_daemon(config) as owner:
        admin_link, fingerprint = await pairing_link(owner, "admin")
        chat_link, _ = await pairing_link(owner, "chat")
        watch_link, _ = await pairing_link(owner, "approve")
        sid = (await owner.create(work_dir, "hi"))["session"]["id"]
        planning = (await owner.create(work_dir, "hi", permission_mode="plan"))["session"]["id"]

        def options(page: Any, selector: str) -> list[str]:
            return list(page.eval_on_selector_all(selector, "(os) => os.map((o) => o.value)"))

        def scenario() -> None:
            with phone_page(chromium, problems) as page:  # admin: what remote_modes allows
                pair(page, admin_link, fingerprint)
                open_session(page, admin_link, sid)
                wait_turn_ends(page, 1)
                assert options(page, "#mode option") == ["plan", "default", "acceptEdits"]
                send(page, "[[write:a.txt|a]]")
                card = page.wait_for_selector("#permissions .card")
                assert "accept" in card.query_selector("[data-action='allow-always']").inner_text()
                page.click("#menu")
                page.click("#new-session")
                page.wait_for_selector("#new-view:not([hidden])")
                assert options(page, "#new-mode option") == ["plan", "default", "acceptEdits"]

            with phone_page(chromium, problems) as page:  # chat: a plan is approved into default
                pair(page, chat_link, fingerprint)
                open_session(page, chat_link, planning)
                wait_turn_ends(page, 1)
                assert options(page, "#mode option") == ["plan", "default"]
                send(page, PLAN)
                card = page.wait_for_selector("#permissions .plan-card")
                assert card.query_selector("[data-action='plan-accept-edits']") is None
                card.query_selector("[data-action='plan-default']").click()
                wait_mode(page, "default")
                page.click("#menu")
                page.click("#new-session")
                page.wait_for_selector("#new-view:not([hidden])")
                assert options(page, "#new-mode option") == ["plan", "default"]

            with phone_page(chromium, problems) as page:  # approve: answer and stop, no more
                pair(page, watch_link, fingerprint)
                open_session(page, watch_link, sid)
                card = page.wait_for_selector("#permissions .card")
                assert card.query_selector("[data-action='allow-always']") is None
                assert page.query_selector("#mode") is None
                assert page.is_visible("#mode-label") and page.is_hidden("#message")
                assert page.is_hidden("#new-session")
                card.query_selector("[data-action='allow']").click()
                wait_turn_ends(page, 2)

        await run_in_browser(scenario)
    assert (work_dir / "a.txt").read_text() == "a"
    assert problems == []


async def test_questions_show_descriptions_take_a_free_answer_and_deny_gives_a_reason(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "chat")
        sid = (await owner.create(work_dir, "hi"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                pair(page, link, fingerprint)
                open_session(page, link, sid)
                wait_turn_ends(page, 1)

                # the question once, each option's description visible, Answer only when chosen
                send(page, "[[ask:Which colour?|Red=warm like fire,Blue=cool like the sea]]")
                card = page.wait_for_selector("#permissions .card")
                assert card.inner_text().count("Which colour?") == 1
                assert card.query_selector("[data-option='Blue'] .option-desc").is_visible()
                assert "cool like the sea" in card.inner_text()
                answer = card.query_selector("[data-action='answer']")
                assert answer.is_disabled()
                card.query_selector("[data-option='Red']").click()
                assert answer.is_enabled()
                # "Other…": a free answer replaces the choice
                card.query_selector("[data-option='__other']").click()
                assert answer.is_disabled()  # nothing typed yet
                card.query_selector("input.other-text").fill("Teal, please")
                assert answer.is_enabled()
                answer.click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 2)

                # deny with a reason: the model is told why, the turn goes on
                send(page, "[[bash:echo no > no.txt]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='deny']").click()
                card.query_selector("textarea.reason").fill("not in this folder")
                card.query_selector("[data-action='deny-confirm']").click()
                page.wait_for_selector("#permissions .card", state="detached")
                wait_turn_ends(page, 3)
                page.wait_for_selector("#transcript .turn-end.completed >> nth=2")

                # deny and stop: the turn ends interrupted
                send(page, "[[bash:echo no > stop.txt]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='deny']").click()
                card.query_selector("[data-action='deny-stop']").click()
                page.wait_for_selector("#transcript .turn-end.interrupted")

        await run_in_browser(scenario)
        snap = await owner.snapshot(sid)
    tools = [i for i in snap["items"] if i["type"] == "tool"]
    assert '"Which colour?"="Teal, please"' in tools[0]["output"]
    assert "not in this folder" in tools[1]["output"]
    assert not (work_dir / "no.txt").exists() and not (work_dir / "stop.txt").exists()
    assert problems == []


# Every visible control a finger can reach, with its size: buttons, links, form fields, summary
# rows, anything focusable. Links inside running text (markdown) are exempt (WCAG 2.5.8).
SMALL_TARGETS = """(min) => {
  const picked = document.querySelectorAll(
    'button, a[href], select, input:not([type=hidden]), textarea, summary, [role=button],'
    + ' [tabindex]:not([tabindex="-1"])');
  const small = [];
  for (const node of picked) {
    if (node.closest('.markdown') && node.matches('a')) continue;
    if (node.closest('[inert]')) continue;
    const box = node.getBoundingClientRect();
    if (!box.width || !box.height) continue; // not rendered
    if (box.right <= 0 || box.left >= innerWidth) continue; // off screen (a closed drawer)
    const style = getComputedStyle(node);
    if (style.visibility === 'hidden') continue;
    if (box.width < min || box.height < min) {
      const name = node.id ? '#' + node.id : node.className ? '.' + node.className : '';
      small.push(`${node.tagName.toLowerCase()}${name} "${(node.innerText || node.ariaLabel
        || '').trim().slice(0, 24)}" ${Math.round(box.width)}x${Math.round(box.height)}`);
    }
  }
  return small;
}"""


def small_targets(page: Any) -> list[str]:
    return list(page.evaluate(SMALL_TARGETS, 44))


async def test_every_tap_target_is_at_least_44_px_on_every_screen(
    make_config: Callable[..., DaemonConfig], work_dir: Path, tmp_path: Path
) -> None:
    chromium = chromium_or_skip()
    image = tmp_path / "dot.png"
    image.write_bytes((DOCS.parent / "sidecode_trio/web/static/icons/icon-192.png").read_bytes())
    (work_dir / "sub").mkdir()
    problems: list[str] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "admin")
        sid = (await owner.create(work_dir, "hi"))["session"]["id"]
        screens: dict[str, list[str]] = {}

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                page.goto(link)
                page.wait_for_selector("#pair-view:not([hidden])")
                screens["pairing"] = small_targets(page)
                pair(page, link, fingerprint)
                screens["home"] = small_targets(page)
                page.click("#menu")
                page.wait_for_selector("#sessions a")
                screens["drawer"] = small_targets(page)
                page.click("#new-session")
                page.wait_for_selector("#folders button")
                screens["new session"] = small_targets(page)

                open_session(page, link, sid)
                wait_turn_ends(page, 1)
                send(page, "[[write:a.txt|a]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='deny']").click()
                page.set_input_files("#attach-input", str(image))
                page.wait_for_selector("#attachments .thumb img")
                screens["permission card"] = small_targets(page)
                card.query_selector("[data-action='allow']").click()
                wait_turn_ends(page, 2)
                page.click("#transcript .tool summary")
                page.wait_for_selector("#transcript .tool .tool-body .code")
                send(page, "[[ask:Which?|A=first,B=second]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-option='__other']").click()
                screens["question"] = small_targets(page)
                card.query_selector("[data-option='A']").click()
                card.query_selector("[data-action='answer']").click()
                wait_turn_ends(page, 3)
                send(page, PLAN)
                page.wait_for_selector("#permissions .plan-card")
                screens["plan"] = small_targets(page)

        await run_in_browser(scenario)
    assert {name: small for name, small in screens.items() if small} == {}
    assert len(screens) == 7 and problems == []


async def test_home_is_the_session_list_with_live_status_and_an_approval_badge(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "chat")

        async def create_settled(prompt: str) -> str:
            """A new session whose first turn has completed (so its activity is over)."""
            session_id = str((await owner.create(work_dir, prompt))["session"]["id"])
            async with owner.events(session_id) as events:
                await events.until_type("turn.completed", "permission.requested")
            return session_id

        def create(prompt: str) -> str:
            return str(trio.from_thread.run(create_settled, prompt))

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                pair(page, link, fingerprint)
                # no sessions: a clear empty state that offers a new one
                page.wait_for_selector("#home-view:not([hidden]) #home-empty:not([hidden])")
                assert page.is_visible("#home-empty-new")
                first = create("first one")
                page.wait_for_selector(f"#home-sessions a[data-session='{first}']")
                assert page.is_hidden("#home-empty")
                second = create("[[bash:echo hi > x.txt]]")
                # newest activity first; the waiting one says so, on ☰ and in the page title
                waiting = (
                    f"#home-sessions a[data-session='{second}'] [data-status='needs-approval']"
                )
                page.wait_for_selector(waiting)
                order = page.eval_on_selector_all(
                    "#home-sessions a", "(as) => as.map((a) => a.dataset.session)"
                )
                assert order == [second, first]
                assert page.get_attribute("#menu-badge", "data-count") == "1"
                assert page.is_visible("#menu-badge")
                assert page.title().startswith("(1) needs approval")
                assert "waiting for approval" in page.get_attribute("#menu", "aria-label")
                # live: once answered, the badge and the title clear
                page.click(f"#home-sessions a[data-session='{second}']")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='allow']").click()
                page.wait_for_selector("#menu-badge", state="hidden")
                page.wait_for_function("() => document.title === 'sidecode'")
                page.click("#home-link")
                page.wait_for_selector("#home-view:not([hidden])")
                page.wait_for_selector(
                    f"#home-sessions a[data-session='{second}'] [data-status='idle']"
                )

        await run_in_browser(scenario)
    assert problems == []


async def test_connection_state_is_honest_and_offline_sends_are_queued_then_delivered(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "chat")
        sid = (await owner.create(work_dir, "online first"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                # unpaired: a screen that says so and how to pair, not "connecting…" forever
                page.goto(link.split("#")[0])
                page.wait_for_selector("#unpaired-view:not([hidden])")
                assert "sidecode-trio pair" in page.inner_text("#unpaired-view")
                assert page.get_attribute("#conn", "data-state") == "unpaired"
                assert page.text_content("#conn-label") == "not paired"

                pair(page, link, fingerprint)
                open_session(page, link, sid)
                wait_turn_ends(page, 1)
                page.evaluate("() => navigator.serviceWorker.ready")

                # the network goes: the indicator says so at once
                page.context.set_offline(True)
                page.wait_for_selector("#conn[data-state='offline']")
                # a message written now is kept, visibly, with its client_id; no raw error
                send(page, "written offline")
                queued = page.wait_for_selector("#outbox .outgoing")
                client_id = queued.get_attribute("data-client-id")
                assert client_id and page.is_hidden("#session-error")
                # ... and survives a reload while offline (the shell comes from the cache)
                page.goto(link.split("#")[0])
                page.wait_for_selector("#home-view:not([hidden])")
                page.wait_for_selector("#home-stale:not([hidden])")  # last known, marked
                page.wait_for_selector(f"#home-sessions a[data-session='{sid}']")
                page.click(f"#home-sessions a[data-session='{sid}']")
                page.wait_for_selector(f"#outbox [data-client-id='{client_id}']")

                # the network is back: it is delivered once, the outbox empties
                page.context.set_offline(False)
                page.wait_for_selector("#conn[data-state='live']")
                wait_text(page, "You said: written offline")
                page.wait_for_selector("#outbox .outgoing", state="detached")
                page.wait_for_selector("#home-stale", state="hidden")

        await run_in_browser(scenario)
        snap = await owner.snapshot(sid)
    users = [i for i in snap["items"] if i["type"] == "user" and i["text"] == "written offline"]
    assert len(users) == 1
    assert problems == []


async def test_a_diff_fits_a_phone_highlighted_with_one_filename_and_long_diffs_folded(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    old = [f"x{i} = {i}" for i in range(200)]
    new = [f"def f{i}(): return {i}" for i in range(60)] + old[60:140]
    new += [f"y{i} = {i}" for i in range(140, 199)]
    new += ["LONG = '" + "word " * 60 + "'"]
    (work_dir / "big.py").write_text("\n".join(old) + "\n")
    measured: dict[str, Any] = {}
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "chat")
        sid = (await owner.create(work_dir, "hi"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                pair(page, link, fingerprint)
                open_session(page, link, sid)
                wait_turn_ends(page, 1)
                send(page, "[[write:big.py|" + "\n".join(new) + "\n]]")
                card = page.wait_for_selector("#permissions .card .diff")
                card = page.wait_for_selector("#permissions .card")
                # one filename, in the title
                assert card.query_selector(".card-title").inner_text() == "Write big.py"
                assert card.inner_text().count("big.py") == 1
                # a compact gutter: one number column, narrow
                gutter = card.eval_on_selector(".dl .ln", "(n) => n.getBoundingClientRect().width")
                measured["gutter"] = gutter
                assert gutter < 30
                # a long hunk shows its start, the rest on a tap
                first = card.query_selector(".hunk:not(.folded)")
                assert len(first.query_selector_all(".dl")) == 30
                first.query_selector(".hunk-more").click()
                assert len(first.query_selector_all(".dl")) == 123
                # highlighted as Python
                assert card.query_selector(".diff[data-language='py'] .dl.ins .hljs-keyword")
                # a long diff folds its later hunks; one opens (and is highlighted) on a tap
                fold = card.query_selector("details.hunk.folded")
                assert fold is not None and fold.query_selector(".dl") is None
                fold.query_selector("summary").click()
                card.wait_for_selector("details.hunk.folded[open] .dl.ins")
                # long lines wrap (nothing cut); the toggle scrolls them instead
                body = card.query_selector(".diff-body")
                assert body.evaluate("(b) => b.scrollWidth <= b.clientWidth + 1")
                long_row = card.query_selector_all(".dl.ins")[-1]
                assert "word word" in long_row.inner_text()
                assert long_row.evaluate("(r) => r.getBoundingClientRect().height > 40")
                card.query_selector(".diff-wrap").click()
                assert body.evaluate("(b) => b.scrollWidth > b.clientWidth")
                screenshot(page, "phone-diff-card.png")
                card.query_selector("[data-action='allow']").click()
                wait_turn_ends(page, 2)
                # the transcript's tool row keeps the diff, without naming the file again
                row = page.wait_for_selector("#transcript .tool .diff")
                assert row.query_selector(".diff-path").inner_text() == ""

        await run_in_browser(scenario)
    assert (work_dir / "big.py").read_text() == "\n".join(new) + "\n"
    assert problems == []


async def test_sessions_are_managed_from_the_phone_titles_costs_images_and_code(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "chat")
        sid = (await owner.create(work_dir, "[[slow:2]] Fix the `parser` bug"))["session"]["id"]
        other = (await owner.create(work_dir, "to delete"))["session"]["id"]

        def info(session_id: str) -> dict[str, Any]:
            snap = trio.from_thread.run(owner.snapshot, session_id)
            return dict(snap["session"])

        def scenario() -> None:
            with phone_page(
                chromium, problems, permissions=["clipboard-read", "clipboard-write"]
            ) as page:
                pair(page, link, fingerprint)
                # a clean title: no directives or markup from the first prompt
                row = page.wait_for_selector(f"#home-sessions a[data-session='{sid}'] .title")
                assert row.inner_text() == "Fix the parser bug"
                open_session(page, link, sid)
                wait_turn_ends(page, 1)
                assert page.inner_text("#session-title") == "Fix the parser bug"
                assert "null" not in page.inner_text(".session-head")
                # costs as people write them
                cost = page.inner_text("#session-cost")
                assert re.fullmatch(r"<\$0\.01|\$\d+\.\d\d", cost), cost
                assert "0.0000" not in page.inner_text("#transcript")

                # code blocks have a copy button that copies
                send(page, "Here:\n\n```python\nanswer = 42\n```")
                wait_turn_ends(page, 2)
                page.evaluate(  # headless Chromium has no system clipboard: record the call
                    "() => { window.copied = [];"
                    " navigator.clipboard.writeText = async (t) => { window.copied.push(t); }; }"
                )
                page.locator("#transcript .msg.assistant pre .copy").last.click()
                page.wait_for_selector("#transcript pre .copy >> text=Copied")
                assert page.evaluate("() => window.copied") == ["answer = 42\n"]

                # rename
                page.click("#session-menu")
                page.fill("#rename-input", "Parser fix")
                page.click("#rename-save")
                page.wait_for_function(
                    "() => document.getElementById('session-title')?.innerText === 'Parser fix'"
                )
                # mirror to Remote Control, and back
                page.click("#mirror-toggle")
                page.wait_for_selector("#mirror-toggle[aria-checked='true']")
                assert info(sid)["mirrored"] is True
                page.click("#mirror-toggle")
                page.wait_for_selector("#mirror-toggle[aria-checked='false']")
                # archive: it leaves the list; unarchive brings it back
                page.click("#archive-toggle")
                page.wait_for_selector("#archive-toggle >> text=Unarchive")
                assert info(sid)["archived"] is True
                page.click("#archive-toggle")
                page.wait_for_selector("#archive-toggle >> text=Archive")

                # delete takes a second, deliberate tap
                open_session(page, link, other)
                wait_turn_ends(page, 1)
                page.click("#session-menu")
                page.click("#delete")
                page.click("#delete-confirm")
                page.wait_for_selector("#home-view:not([hidden])")
                page.wait_for_selector(
                    f"#home-sessions a[data-session='{other}']", state="detached"
                )

        await run_in_browser(scenario)
        sessions = (await owner.http.get("/v1/sessions")).json()["sessions"]
    assert [s["title"] for s in sessions if s["id"] == sid] == ["Parser fix"]
    assert other not in [s["id"] for s in sessions]
    assert problems == []


AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"


def axe_serious(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is (injected through the
    DevTools protocol, which the page's CSP does not govern)."""
    if not page.evaluate("() => !!window.axe"):
        page.evaluate(AXE.read_text())
    results = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".filter((v) => v.impact === 'serious' || v.impact === 'critical')"
        ".map((v) => `${v.id}: ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`)"
    )
    return list(results)


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_axe_finds_nothing_serious_on_the_main_screens(
    make_config: Callable[..., DaemonConfig], work_dir: Path, scheme: str
) -> None:
    chromium = chromium_or_skip()
    problems: list[str] = []
    found: dict[str, list[str]] = {}
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "admin")
        sid = (await owner.create(work_dir, "hi"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems, color_scheme=scheme) as page:
                page.goto(link.split("#")[0])
                page.wait_for_selector("#unpaired-view:not([hidden])")
                found["unpaired"] = axe_serious(page)
                page.goto(link)
                page.wait_for_selector("#pair-view:not([hidden])")
                found["pairing"] = axe_serious(page)
                pair(page, link, fingerprint)
                page.wait_for_selector(f"#home-sessions a[data-session='{sid}']")
                found["home"] = axe_serious(page)
                # the closed drawer is out of the accessibility tree; open, the page behind is
                inert = "() => ['drawer', 'main'].map((id) => document.getElementById(id).inert)"
                assert page.evaluate(inert) == [True, False]
                page.click("#menu")
                page.wait_for_selector("#sessions a")
                assert page.evaluate(inert) == [False, True]
                found["drawer"] = axe_serious(page)
                page.click("#new-session")
                page.wait_for_selector("#folders button")
                found["new session"] = axe_serious(page)
                open_session(page, link, sid)
                wait_turn_ends(page, 1)
                send(page, "Here:\n\n```python\nanswer = 42\n```")
                wait_turn_ends(page, 2)
                send(page, "[[write:a.py|x = 1\n]]")
                card = page.wait_for_selector("#permissions .card")
                card.query_selector("[data-action='deny']").click()
                page.click("#session-menu")
                found["permission card"] = axe_serious(page)
                # a card is a headed region, announced once through the alert region
                assert card.evaluate("(c) => c.matches('section[aria-labelledby]')")
                assert card.query_selector("h3.card-title").inner_text() == "Write a.py"
                page.wait_for_function(
                    "() => document.getElementById('announcer').textContent"
                    " === 'Needs your answer: Write a.py'"
                )
                card.query_selector("[data-action='allow']").click()
                wait_turn_ends(page, 3)
                # a tool's state is a symbol and a word, not a colour only
                status = page.locator("#transcript .tool .tool-status").last
                assert status.inner_text() == "✓" and status.get_attribute("aria-label") == "done"
                send(page, "[[ask:Which?|A=first,B=second]]")
                page.wait_for_selector("#permissions .card .option")
                found["question"] = axe_serious(page)
                page.click("#permissions [data-option='A']")
                page.click("#permissions [data-action='answer']")
                wait_turn_ends(page, 4)
                send(page, PLAN)
                page.wait_for_selector("#permissions .plan-card")
                found["plan"] = axe_serious(page)

        await run_in_browser(scenario)
    assert {screen: v for screen, v in found.items() if v} == {}
    assert len(found) == 8 and problems == []


LIVE_REGION_WRITES = """() => {
  window.liveWrites = 0;
  window.longTasks = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
  }).observe({ type: 'longtask' });
  new MutationObserver((records) => {
    for (const r of records) {
      const node = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      if (node?.closest('[aria-live], [role=status], [role=alert], [role=log]')) {
        window.liveWrites += 1;
      }
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
}"""


async def test_streaming_cost_is_measured_under_a_4x_cpu_throttle(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    """Item 7's numbers: script and layout time per streamed KB, long tasks, live-region writes
    and DOM nodes over session switches, for a ~46 KB markdown answer streamed over ~12 s with
    the CPU slowed 4x. Reported (printed, and tests/artifacts/streaming.json), never asserted:
    they depend on the machine. What is asserted is that the answer arrived whole."""
    chromium = chromium_or_skip()
    problems: list[str] = []
    report: dict[str, Any] = {}
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "chat")
        sid = (await owner.create(work_dir, "hi"))["session"]["id"]
        other = (await owner.create(work_dir, "Here:\n\n```python\nx = 1\n```"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                pair(page, link, fingerprint)
                open_session(page, link, sid)
                wait_turn_ends(page, 1)
                cdp = page.context.new_cdp_session(page)
                cdp.send("Performance.enable")
                cdp.send("Emulation.setCPUThrottlingRate", {"rate": 4})

                def metrics() -> dict[str, float]:
                    got = cdp.send("Performance.getMetrics")["metrics"]
                    return {m["name"]: float(m["value"]) for m in got}

                page.evaluate(LIVE_REGION_WRITES)
                start = metrics()
                send(page, "[[doc:46:160]]")
                # a finished code block is highlighted once and then left alone while the rest
                # streams in (it used to be re-parsed and re-highlighted every frame)
                page.wait_for_function(
                    "() => { const pre = document.querySelector("
                    "'#transcript .assistant.streaming pre code.hljs');"
                    " if (pre) window.firstBlock = pre; return !!pre; }"
                )
                page.wait_for_function(  # ~12 s of streaming: this step may take longer
                    "() => document.querySelectorAll('#transcript .turn-end').length >= 2",
                    timeout=120_000,
                )
                end = metrics()
                cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})
                text = turn_text(page)
                kb = len(text.encode()) / 1024
                long_tasks = page.evaluate("() => window.longTasks")
                report["streamed_kb"] = round(kb, 1)
                for name, key in [
                    ("ScriptDuration", "script"),
                    ("LayoutDuration", "layout"),
                    ("RecalcStyleDuration", "style"),
                    ("TaskDuration", "task"),
                ]:
                    spent = end[name] - start[name]
                    report[f"{key}_s"] = round(spent, 2)
                    report[f"{key}_ms_per_kb"] = round(spent * 1000 / kb, 1)
                report["long_tasks"] = len(long_tasks)
                report["longest_task_ms"] = round(max(long_tasks, default=0))
                report["live_region_writes"] = page.evaluate("() => window.liveWrites")
                report["finished_block_kept"] = page.evaluate(
                    "() => { const kept = window.firstBlock.isConnected;"
                    " window.firstBlock = null; return kept; }"  # nothing keeps the view alive
                )
                # the whole answer arrived, every section rendered
                sections = page.locator("#transcript .assistant").last.locator("h2").count()
                assert sections >= 40 and "Step 0" in text

                # switch sessions back and forth: closed views are released (DOM nodes the
                # renderer holds, attached or not, after a garbage collection)
                def nodes() -> int:
                    cdp.send("HeapProfiler.collectGarbage")
                    return int(cdp.send("Memory.getDOMCounters")["nodes"])

                open_session(page, link, other)
                wait_turn_ends(page, 1)
                first = nodes()
                for _ in range(6):
                    open_session(page, link, sid)
                    wait_turn_ends(page, 2)
                    open_session(page, link, other)
                    wait_turn_ends(page, 1)
                report["dom_nodes_after_1_switch"] = first
                report["dom_nodes_after_13_switches"] = nodes()
                report["follows_open"] = page.evaluate("() => window.sidecode.client.subs.size")

        await run_in_browser(scenario)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "streaming.json").write_text(json.dumps(report, indent=2) + "\n")
    print("streaming cost:", json.dumps(report))
    assert report["finished_block_kept"]  # not re-rendered while the rest streamed in
    assert report["follows_open"] == 2  # the list and the one open session
    assert problems == []


async def test_the_app_shell_arrives_gzipped_with_year_long_caching(
    make_config: Callable[..., DaemonConfig],
) -> None:
    """What a phone downloads at first start: every script and style gzipped and marked
    immutable (the URLs carry the build). The transfer size is printed."""
    chromium = chromium_or_skip()
    problems: list[str] = []
    seen: dict[str, dict[str, str]] = {}
    transferred: list[float] = []
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, _ = await pairing_link(owner, "chat")

        def scenario() -> None:
            with phone_page(chromium, problems) as page:
                cdp = page.context.new_cdp_session(page)
                cdp.send("Network.enable")
                cdp.on(
                    "Network.loadingFinished",
                    lambda e: transferred.append(float(e["encodedDataLength"])),
                )

                def on_response(response: Any) -> None:
                    if "/app/" in response.url:
                        seen[response.url.split("/app/")[1]] = response.all_headers()

                page.on("response", on_response)
                page.goto(link.split("#")[0])
                page.wait_for_selector("#unpaired-view:not([hidden])")
                page.evaluate("() => navigator.serviceWorker.ready")

        await run_in_browser(scenario)
    assets = {name: h for name, h in seen.items() if re.search(r"\.(js|css)\?v=", name)}
    assert len(assets) >= 10, sorted(seen)
    for name, headers in assets.items():
        assert headers.get("content-encoding") == "gzip", name
        assert "immutable" in headers["cache-control"], name
    print(f"app shell: {len(seen)} responses, {sum(transferred) / 1024:.0f} KiB transferred")
    assert problems == []


PARSER = """def parse(tokens):
    state = []
    for token in tokens:
        state = step(state, token)
    return state
"""
PLAN_TEXT = (
    "## Stop the parser at the end of input\\n\\n"
    "1. **`step()`** raises `ValueError` when a token is missing, naming where\\n"
    "2. **`parse()`** stops at the first error and keeps what it read\\n"
    "3. Tests: a cut-short input, an empty one, a normal one\\n\\n"
    "Touches `parser.py` and `tests/test_parser.py`; nothing else changes."
)


def stage(page: Any, text: str) -> None:
    """Show the last message as the words a person would type (the fake CLI is driven by
    directives like ``[[edit:...]]``); only the bubble's text changes, through the DOM."""
    page.evaluate(
        "(t) => { const b = [...document.querySelectorAll('#transcript .msg.user .bubble')]"
        ".pop(); if (b) b.textContent = t; }",
        text,
    )


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_readme_screenshots_of_the_plan_card_and_a_diff(
    make_config: Callable[..., DaemonConfig], work_dir: Path, scheme: str
) -> None:
    """The README's pictures, from the app as it is: a plan card and an edit's diff, light and
    dark (docs/ is rewritten with SIDECODE_UPDATE_SCREENSHOTS=1, or when a file is missing)."""
    chromium = chromium_or_skip()
    problems: list[str] = []
    (work_dir / "parser.py").write_text(PARSER)
    shots = [f"phone-plan-{scheme}.png", f"phone-diff-{scheme}.png"]
    async with running_daemon(make_config(quic_port=-1)) as owner:
        link, fingerprint = await pairing_link(owner, "admin")
        first = "Make the parser stop cleanly when the input is cut short"
        sid = (await owner.create(work_dir, first, permission_mode="plan"))["session"]["id"]

        def scenario() -> None:
            with phone_page(chromium, problems, scale=2, color_scheme=scheme) as page:
                pair(page, link, fingerprint)
                open_session(page, link, sid)
                wait_turn_ends(page, 1)
                send(page, f"[[plan:{PLAN_TEXT}]]")
                page.wait_for_selector("#permissions .plan-card")
                stage(page, "Plan it first, then we'll see")
                screenshot(page, shots[0])
                page.click("#permissions [data-action='plan-default']")
                wait_turn_ends(page, 2)
                old = "    for token in tokens:\n        state = step(state, token)"
                new = (
                    "    for at, token in enumerate(tokens):\n        try:\n"
                    "            state = step(state, token)\n        except ValueError as error:\n"
                    "            raise ValueError(f'cut short at token {at}') from error"
                )
                send(page, f"[[edit:parser.py|{old}|{new}]]")
                page.wait_for_selector("#permissions .card .diff .dl.ins")
                stage(page, "Go ahead with step 2")
                screenshot(page, shots[1])

        await run_in_browser(scenario)
    for name in shots:
        assert (ARTIFACTS / name).stat().st_size > 10_000
        if UPDATE_DOCS or not (DOCS / name).exists():
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(ARTIFACTS / name, DOCS / name)
    assert problems == []
