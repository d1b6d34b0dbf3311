"""WebKit (Safari's engine) for the browser tests: Debian's WebKitGTK, its MiniBrowser driven by
``WebKitWebDriver`` over plain W3C WebDriver (a few JSON requests on loopback, httpx), on an Xvfb
display of its own (this WebKitGTK has no headless mode). Playwright's own WebKit build is never
downloaded. ``nox -s tests`` installs ``webkit2gtk-driver`` and ``xvfb`` under CI; elsewhere the
tests skip without them.

What it is and is not, as Debian builds it (2.50): no ``WebTransport`` (like Safari), and no
``RTCPeerConnection`` at all (built without WebRTC, unlike Safari), so it can drive the app over
HTTP/SSE on the daemon's own origin but not over the WebRTC DataChannel. Ed25519 and X25519 are in
its WebCrypto, as in Safari 17+.

Page errors (uncaught exceptions, unhandled rejections, CSP refusals) are caught by a hook each
page gets once it has loaded (``CATCH_ERRORS``); the driver's and browser's own output is kept in
a file, shown when a wait runs out.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

DRIVER = shutil.which("WebKitWebDriver") or "/usr/bin/WebKitWebDriver"
XVFB = shutil.which("Xvfb") or "/usr/bin/Xvfb"
MINIBROWSER = "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser"
STEP_TIMEOUT = 30.0  # seconds for each wait, as the Chromium tests' STEP_TIMEOUT_MS
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # W3C WebDriver's element reference key
# An error hook, installed once a page has loaded (MiniBrowser in automation mode does not write
# console messages anywhere a test can read, and this WebDriver has no log or BiDi events): a
# failure during the load itself shows anyway, as an app that never gets to the awaited state.
CATCH_ERRORS = """() => {
  if (window.__webkitErrors) return;
  const errors = (window.__webkitErrors = []);
  addEventListener('error', (e) => errors.push(`page error: ${e.message} (${e.filename})`));
  addEventListener('unhandledrejection', (e) => errors.push(`unhandled rejection: ${e.reason}`));
  document.addEventListener('securitypolicyviolation',
    (e) => errors.push(`Refused to load ${e.blockedURI} (${e.violatedDirective})`));
}"""
# Whether the element of a selector can take a click: there, enabled, in view, not moving
# between two frames (a transition), and what a click at its centre would hit.
ACTIONABLE = """async (s) => {
  const e = document.querySelector(s);
  if (!e || e.disabled) return false;
  e.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  const a = e.getBoundingClientRect();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const b = e.getBoundingClientRect();
  if (!b.width || !b.height || a.x !== b.x || a.y !== b.y || a.width !== b.width) return false;
  const hit = document.elementFromPoint(b.x + b.width / 2, b.y + b.height / 2);
  return !!hit && (hit === e || e.contains(hit));
}"""


def webkit_or_skip() -> None:
    """Skip where WebKitGTK's driver or Xvfb is missing, except in CI (the nox ``tests``
    session installs ``webkit2gtk-driver`` and ``xvfb`` there)."""
    missing = [p for p in (DRIVER, XVFB, MINIBROWSER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"WebKit is missing in CI ({missing}): the nox 'tests' session installs it")
    pytest.skip("WebKit is not installed (apt-get install webkit2gtk-driver xvfb)")


class WebDriverError(AssertionError):
    """A WebDriver command failed, or a wait ran out: the test fails with what the page said."""


class WebKit:
    """One browsing session of MiniBrowser: the few WebDriver commands the tests need."""

    def __init__(self, http: httpx.Client, session: str, version: str, log: Path) -> None:
        self.http = http
        self.session = session
        self.version = version  # WebKitGTK's, as the driver reports it: "2.50.6"
        self.log_file = log
        self.errors: list[str] = []  # what the pages before this one caught (CATCH_ERRORS)

    def command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = self.http.request(method, f"/session/{self.session}{path}", json=body)
        value = reply.json()["value"]
        if reply.status_code != 200:
            raise WebDriverError(f"{method} {path}: {value}")
        return value

    def goto(self, url: str) -> None:
        self.keep_errors()
        self.command("POST", "/url", {"url": url})
        self.run(CATCH_ERRORS)

    def reload(self) -> None:
        self.keep_errors()
        self.command("POST", "/refresh", {})
        self.run(CATCH_ERRORS)

    def keep_errors(self) -> None:
        """Move what the page's error hook caught into ``errors`` (before the page goes)."""
        self.errors.extend(self.run("() => window.__webkitErrors || []") or [])

    @property
    def url(self) -> str:
        return str(self.command("GET", "/url"))

    def run(self, function: str, *args: Any) -> Any:
        """The value of the JavaScript ``function`` (an expression of one, Playwright style)
        called with ``args``; a promise is awaited."""
        script = f"const done = arguments[arguments.length - 1];\
            Promise.resolve(({function})(...[...arguments].slice(0, -1))).then(\
            (value) => done({{ value }}), (error) => done({{ error: String(error) }}));"
        result = self.command("POST", "/execute/async", {"script": script, "args": list(args)})
        if "error" in result:
            raise WebDriverError(f"{function}: {result['error']}")
        return result.get("value")

    def wait(self, function: str, *args: Any, timeout: float = STEP_TIMEOUT) -> Any:
        """The first truthy value of ``function(*args)``, polled (no timing is asserted: the
        deadline only bounds a wait for what the test then checks)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(function, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise WebDriverError(
                    f"waited {timeout} s for {function} {args}\n{self.errors}\n{self.log()}"
                )
            time.sleep(0.05)

    def wait_for(self, selector: str, timeout: float = STEP_TIMEOUT) -> None:
        self.wait("(s) => !!document.querySelector(s)", selector, timeout=timeout)

    def find(self, selector: str) -> dict[str, str]:
        found = self.command("POST", "/element", {"using": "css selector", "value": selector})
        return {ELEMENT: found[ELEMENT]}

    def click(self, selector: str) -> None:
        """A real click (WebDriver's: scrolled into view, hit-tested), not a scripted one, once
        the element is actionable as Playwright means it (a drawer has finished sliding in)."""
        self.wait(ACTIONABLE, selector)
        self.command("POST", f"/element/{self.find(selector)[ELEMENT]}/click", {})

    def fill(self, selector: str, text: str) -> None:
        """Type ``text`` into a field once it can take it (shown, enabled, not moving)."""
        self.wait(ACTIONABLE, selector)
        element = self.find(selector)[ELEMENT]
        self.command("POST", f"/element/{element}/clear", {})
        self.command("POST", f"/element/{element}/value", {"text": text})

    def text(self, selector: str) -> str:
        return str(self.run("(s) => document.querySelector(s).textContent", selector))

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))

    def log(self) -> str:
        """What the driver and the browser wrote (GLib warnings, crashes)."""
        return self.log_file.read_text(errors="replace")

    def page_errors(self) -> list[str]:
        """The uncaught exceptions, unhandled rejections and CSP refusals of every page so far,
        from the page's load on (what Playwright's ``pageerror`` and console report)."""
        self.keep_errors()
        errors, self.errors = self.errors, []
        return errors


def _free_port() -> int:
    with socket.socket() as probe:  # WebKitWebDriver takes no port 0: ask the kernel for one
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End ``process`` and the browser processes it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:  # the web and network processes may outlive the driver for a moment
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def xvfb_display(directory: Path) -> Iterator[str]:
    """A display of its own (Xvfb picks a free number and writes it to ``-displayfd``)."""
    read, write = os.pipe()
    log = (directory / "xvfb.log").open("wb")
    server = subprocess.Popen(
        [XVFB, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    os.close(write)
    try:
        number = b""
        while not number.endswith(b"\n"):
            chunk = os.read(read, 16)
            if not chunk:
                raise RuntimeError(f"Xvfb did not start: {(directory / 'xvfb.log').read_text()}")
            number += chunk
        yield ":" + number.decode().strip()
    finally:
        os.close(read)
        _stop(server)
        log.close()


@contextmanager
def webkit_browser(
    directory: Path, viewport: tuple[int, int] = (390, 844), accept_insecure_certs: bool = False
) -> Iterator[WebKit]:
    """MiniBrowser in a fresh profile (MiniBrowser's automation mode uses an ephemeral one),
    with a window of ``viewport`` CSS pixels (its toolbar keeps it at least 447 px wide, a large
    phone's width); every process it started ends after.
    ``accept_insecure_certs``: as a person who clicked through the certificate warning."""
    webkit_or_skip()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "webkit.log"
    with ExitStack() as stack:
        display = stack.enter_context(xvfb_display(directory))
        out = stack.enter_context(log.open("wb"))
        port = _free_port()
        env = {**os.environ, "DISPLAY": display}
        driver = subprocess.Popen(
            [DRIVER, f"--port={port}", "--host=local"],
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
        stack.callback(_stop, driver)
        http = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60))
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.TransportError:
                pass
            if driver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"WebKitWebDriver did not start: {log.read_text()}")
            time.sleep(0.05)
        options = {
            "binary": MINIBROWSER,
            "args": ["--automation"],  # what MiniBrowser needs to take WebDriver's session
        }
        capabilities = {
            "alwaysMatch": {
                "webkitgtk:browserOptions": options,
                "acceptInsecureCerts": accept_insecure_certs,
            }
        }
        reply = http.post("/session", json={"capabilities": capabilities}).json()["value"]
        if "sessionId" not in reply:
            raise RuntimeError(f"WebKitWebDriver made no session: {reply}\n{log.read_text()}")
        version = reply["capabilities"]["browserVersion"]
        browser = WebKit(http, reply["sessionId"], version, log)
        stack.callback(lambda: http.delete(f"/session/{browser.session}"))
        width, height = viewport
        browser.command("POST", "/window/rect", {"width": width, "height": height})
        browser.command("POST", "/timeouts", {"script": 60_000})
        yield browser
