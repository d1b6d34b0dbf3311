"""The terminal client's side of the v1 HTTP API: the owner's local token, httpx on Trio.

It speaks the protocol every client speaks (``protocol/PROTOCOL.md``); only the credential
differs: on the owner's machine the local bearer token from ``<state-dir>/token`` is accepted
from loopback. A daemon refusal becomes a :class:`~..errors.SidecodeError` carrying the daemon's
own code and message.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import attrs
import httpx

from ..errors import SidecodeError

TIMEOUT: Final = 10.0


class DaemonAPI:
    def __init__(self, url: str, token: str) -> None:
        # verify=False: the daemon's own certificate at the address its 0600 daemon.json names,
        # as the other owner commands do (devices pin the identity key instead)
        self.http = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
            verify=False,  # noqa: S501 - see above
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def move(self, location: Location) -> None:
        """Talk to the daemon where ``daemon.json`` now says it is (its port may change)."""
        self.http.base_url = httpx.URL(location.url)
        self.http.headers["Authorization"] = f"Bearer {location.token}"

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise unreachable(self.http.base_url, exc) from None
        return _reply(response)

    async def resolve(self, prefix: str) -> str:
        """The session whose id is ``prefix``, or the only one that starts with it."""
        sessions = (await self.call("GET", "/v1/sessions?archived=all"))["sessions"]
        ids = [str(s["id"]) for s in sessions]
        if prefix in ids:
            return prefix
        found = [i for i in ids if prefix and i.startswith(prefix)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise SidecodeError(f"no session matches {prefix!r}", code="unknown_session")
        shown = ", ".join(found[:5])
        raise SidecodeError(f"{prefix!r} matches {len(found)} sessions: {shown}", code="ambiguous")

    @asynccontextmanager
    async def events(self, session_id: str, since: str | None) -> AsyncIterator[httpx.Response]:
        """The session's event stream, from ``since`` (an SSE id) or a snapshot."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": since} if since else {})}
        path = f"/v1/sessions/{quote(session_id, safe='')}/events"
        timeout = httpx.Timeout(TIMEOUT, read=None)  # a quiet session sends keep-alives only
        async with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                await response.aread()
                _reply(response)
            yield response


@attrs.frozen
class Location:
    """Where the daemon on a state folder says it is (its 0600 ``daemon.json`` and token)."""

    url: str
    token: str
    pid: int | None


def locate(state_dir: Path) -> Location:
    """Read ``daemon.json`` now: a daemon restarted on another port is found at its new one."""
    try:
        info = json.loads((state_dir / "daemon.json").read_text())
        token = (state_dir / "token").read_text().strip()
        url = str(info["http"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SidecodeError(
            f"no daemon is running on {state_dir} (daemon.json is gone)", code="unreachable"
        ) from None
    parts = urllib.parse.urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
        url = f"{parts.scheme}://127.0.0.1:{parts.port}"
    pid = info.get("pid")
    return Location(url, token, pid if isinstance(pid, int) and pid > 0 else None)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def why_unreachable(location: Location) -> str | None:
    """A better reason than "cannot reach" when ``daemon.json`` names a dead process."""
    if location.pid is not None and not pid_alive(location.pid):
        return f"daemon.json is stale (pid {location.pid} is dead)"
    return None


def unreachable(url: object, exc: Exception) -> SidecodeError:
    return SidecodeError(f"cannot reach the daemon at {url}: {exc}", code="unreachable")


def _reply(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        raise SidecodeError(str(error.get("message")), code=str(error.get("code")))
    raise SidecodeError(f"the daemon said {response.status_code}", code="refused")
