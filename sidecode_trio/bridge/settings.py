"""The bridge's settings: the ``[remote]`` table of the config file (all optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs

ANTHROPIC_API: Final = "https://api.anthropic.com"
OAUTH_TOKEN_URL: Final = "https://platform.claude.com/v1/oauth/token"  # noqa: S105 - a URL


@attrs.frozen
class BridgeSettings:
    api_url: str = ANTHROPIC_API  #: the Remote Control API (REST and WebSocket)
    oauth_url: str = OAUTH_TOKEN_URL  #: where an expiring access token is refreshed
    poll_interval: float = 30.0  #: seconds between refreshes of the remote session list
    follow_grace: float = 60.0  #: seconds a session stays followed after its last client left
    ping_interval: float = 20.0  #: seconds of upstream silence before a keep-alive ping
    stall_timeout: float = 45.0  #: seconds without any frame or pong before reconnecting
    backoff_initial: float = 1.0  #: first reconnect delay (seconds), doubled per failure
    backoff_max: float = 60.0  #: the longest reconnect delay (seconds)
    refresh_margin: float = 300.0  #: refresh the access token this long before it expires
    http_timeout: float = 30.0  #: seconds for one REST call upstream
    #: Claude Code's credentials file (default: ``$CLAUDE_CONFIG_DIR/.credentials.json``,
    #: ``~/.claude/.credentials.json`` without that variable)
    credentials_file: Path | None = None
    #: where the organization id is read (default ``~/.claude.json``)
    account_file: Path | None = None

    def problems(self) -> list[str]:
        found = []
        for name in ("api_url", "oauth_url"):
            value: str = getattr(self, name)
            if not value.startswith(("https://", "http://")):
                found.append(f"bad value @ $.remote.{name}: must be an http(s) URL")
        for name in (
            "poll_interval",
            "follow_grace",
            "ping_interval",
            "stall_timeout",
            "backoff_initial",
            "backoff_max",
            "http_timeout",
        ):
            if getattr(self, name) <= 0:
                found.append(f"bad value @ $.remote.{name}: must be > 0 seconds")
        if self.refresh_margin < 0:
            found.append("bad value @ $.remote.refresh_margin: must be >= 0 seconds")
        if self.stall_timeout <= self.ping_interval:
            found.append("bad value @ $.remote.stall_timeout: must be longer than ping_interval")
        return found
