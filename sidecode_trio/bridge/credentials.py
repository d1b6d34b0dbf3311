"""The user's Claude login, read where Claude Code keeps it, refreshed ahead of expiry.

Where the token comes from, first found wins:

1. the environment: ``CLAUDE_CODE_OAUTH_TOKEN`` (an access token, e.g. from ``claude
   setup-token``), with ``CLAUDE_CODE_OAUTH_REFRESH_TOKEN`` optionally; a rotated refresh token
   can only be kept in memory there;
2. on macOS, the keychain item Claude Code uses (service ``Claude Code-credentials``, account
   ``$USER``), through ``keyring``;
3. ``${CLAUDE_CONFIG_DIR:-~/.claude}/.credentials.json``.

The blob in 2 and 3 is ``{"claudeAiOauth": {accessToken, refreshToken, expiresAt (ms), scopes,
...}}`` (a root-level object of those fields is accepted too). When a refresh rotates the refresh
token, the new tokens are written back to where they came from, merged into the blob with every
unknown field kept, the file replaced atomically with mode 0600, so the user's own Claude Code
login keeps working. The organization id: ``CLAUDE_CODE_ORGANIZATION_UUID``, else
``~/.claude.json`` → ``oauthAccount.organizationUuid``, else the refresh response.

Tokens never appear in a ``repr``, a log line or an error message, and are sent only to the
configured Remote Control API and OAuth token endpoint.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import httpx
import trio

from ..errors import UpstreamError
from ..host.private import write_atomic
from .settings import BridgeSettings

log = logging.getLogger(__name__)

ENV_ACCESS_TOKEN: Final = "CLAUDE_CODE_OAUTH_TOKEN"  # noqa: S105 - a variable's name
ENV_REFRESH_TOKEN: Final = "CLAUDE_CODE_OAUTH_REFRESH_TOKEN"  # noqa: S105 - a variable's name
ENV_ORGANIZATION: Final = "CLAUDE_CODE_ORGANIZATION_UUID"
KEYCHAIN_SERVICE: Final = "Claude Code-credentials"
BLOB_KEY: Final = "claudeAiOauth"
CLIENT_ID: Final = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"  # Claude Code's public OAuth client
SCOPES: Final = (
    "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload"
)
UNAUTHORIZED: Final = "upstream_unauthorized"


def unauthorized(message: str) -> UpstreamError:
    return UpstreamError(message, code=UNAUTHORIZED)


# -- pure parts ------------------------------------------------------------------------------------


@attrs.frozen
class Tokens:
    access_token: str = attrs.field(repr=False)
    refresh_token: str | None = attrs.field(default=None, repr=False)
    expires_at: float | None = None  #: unix seconds; None: unknown (used until refused)
    scopes: tuple[str, ...] = ()


def tokens_from_blob(blob: Any) -> Tokens | None:
    """The tokens in Claude Code's credentials blob, or None if it holds none."""
    if not isinstance(blob, Mapping):
        return None
    inner = blob.get(BLOB_KEY, blob)
    if not isinstance(inner, Mapping):
        return None
    access, refresh = inner.get("accessToken"), inner.get("refreshToken")
    if not isinstance(access, str) and not isinstance(refresh, str):
        return None
    expires = inner.get("expiresAt")
    scopes = inner.get("scopes")
    return Tokens(
        access_token=access if isinstance(access, str) else "",
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_at=expires / 1000 if isinstance(expires, int | float) and expires > 0 else None,
        scopes=tuple(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else (),
    )


def merge_blob(blob: Any, tokens: Tokens) -> dict[str, Any]:
    """``blob`` with ``tokens`` written in, every other field (known or not) kept."""
    base = dict(blob) if isinstance(blob, Mapping) else {}
    nested = BLOB_KEY in base or "accessToken" not in base
    inner = dict(base.get(BLOB_KEY) or {}) if nested else base
    inner["accessToken"] = tokens.access_token
    if tokens.refresh_token is not None:
        inner["refreshToken"] = tokens.refresh_token
    if tokens.expires_at is not None:
        inner["expiresAt"] = int(tokens.expires_at * 1000)
    if tokens.scopes:
        inner["scopes"] = list(tokens.scopes)
    if nested:
        base[BLOB_KEY] = inner
        return base
    return inner


def needs_refresh(tokens: Tokens, now: float, margin: float) -> bool:
    if not tokens.access_token:
        return True
    return tokens.expires_at is not None and tokens.expires_at - margin <= now


def refresh_body(refresh_token: str) -> dict[str, str]:
    return {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": CLIENT_ID,
        "scope": SCOPES,
    }


def parse_refresh(body: Any, now: float, old: Tokens) -> tuple[Tokens, str | None]:
    """The new tokens (keeping the old refresh token when it was not rotated) and the
    organization id when the response names one."""
    if not isinstance(body, Mapping) or not isinstance(body.get("access_token"), str):
        raise UpstreamError("the OAuth refresh answered without an access token")
    rotated = body.get("refresh_token")
    expires_in = body.get("expires_in")
    scope = body.get("scope")
    tokens = Tokens(
        access_token=body["access_token"],
        refresh_token=rotated if isinstance(rotated, str) and rotated else old.refresh_token,
        expires_at=now + expires_in if isinstance(expires_in, int | float) else None,
        scopes=tuple(scope.split()) if isinstance(scope, str) and scope else old.scopes,
    )
    organization = body.get("organization")
    org = organization.get("uuid") if isinstance(organization, Mapping) else None
    return tokens, org if isinstance(org, str) and org else None


# -- where the tokens live -------------------------------------------------------------------------


class Source(Protocol):
    name: str  #: shown in status and doctor: "environment", "keychain", "file <path>"

    def load(self) -> Tokens | None: ...

    def save(self, tokens: Tokens) -> None: ...


class EnvironmentSource:
    name = "environment"

    def __init__(self, env: Mapping[str, str]) -> None:
        access, refresh = env.get(ENV_ACCESS_TOKEN, ""), env.get(ENV_REFRESH_TOKEN) or None
        self._tokens = Tokens(access, refresh) if access or refresh else None

    def load(self) -> Tokens | None:
        return self._tokens

    def save(self, tokens: Tokens) -> None:
        self._tokens = tokens  # an environment cannot be written back: memory only


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file {path}"

    def _read(self) -> Any:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UpstreamError(f"cannot read {self.path}: {type(exc).__name__}") from None

    def load(self) -> Tokens | None:
        return tokens_from_blob(self._read())

    def save(self, tokens: Tokens) -> None:
        """Merge into the current file and replace it atomically (0600)."""
        write_atomic(self.path, json.dumps(merge_blob(self._read(), tokens), indent=2))


class KeychainSource:
    name = "keychain"

    def __init__(self, account: str) -> None:
        self.account = account

    def _read(self) -> Any:
        import keyring
        from keyring.errors import KeyringError

        try:
            text = keyring.get_password(KEYCHAIN_SERVICE, self.account)
        except KeyringError:
            return None
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def load(self) -> Tokens | None:
        return tokens_from_blob(self._read())

    def save(self, tokens: Tokens) -> None:
        import keyring

        keyring.set_password(
            KEYCHAIN_SERVICE, self.account, json.dumps(merge_blob(self._read(), tokens))
        )


def config_dir(env: Mapping[str, str]) -> Path:
    explicit = env.get("CLAUDE_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return _home(env) / ".claude"


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def discover(
    env: Mapping[str, str], settings: BridgeSettings, platform: str = sys.platform
) -> Source | None:
    """The first place holding a login, in the documented order."""
    sources: list[Source] = [EnvironmentSource(env)]
    if platform == "darwin" and settings.credentials_file is None:
        sources.append(KeychainSource(env.get("USER") or getpass.getuser()))
    path = settings.credentials_file or config_dir(env) / ".credentials.json"
    sources.append(FileSource(path))
    for source in sources:
        try:
            if source.load() is not None:
                return source
        except UpstreamError as exc:
            log.warning("%s", exc.message)
    return None


def organization(env: Mapping[str, str], settings: BridgeSettings) -> str | None:
    if env.get(ENV_ORGANIZATION):
        return env[ENV_ORGANIZATION]
    path = settings.account_file or _home(env) / ".claude.json"
    try:
        account = json.loads(path.read_text()).get("oauthAccount")
    except (OSError, ValueError, AttributeError):
        return None
    org = account.get("organizationUuid") if isinstance(account, Mapping) else None
    return org if isinstance(org, str) and org else None


# -- the driver ------------------------------------------------------------------------------------


class Credentials:
    """The current access token, refreshed ahead of expiry (one refresh at a time)."""

    def __init__(
        self,
        source: Source,
        org: str | None,
        settings: BridgeSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.org = org
        self._settings = settings
        self._clock = clock
        self._tokens = source.load() or Tokens("")
        self._lock = trio.Lock()
        self.refreshes = 0
        self.error: UpstreamError | None = None  #: the last refusal, until a token works

    async def access_token(self, http: httpx.AsyncClient) -> str:
        async with self._lock:
            if needs_refresh(self._tokens, self._clock(), self._settings.refresh_margin):
                await self._renew(http, rejected=None)
            return self._tokens.access_token

    async def after_rejection(self, http: httpx.AsyncClient, rejected: str) -> str:
        """The API refused ``rejected`` (401): get a newer token or raise unauthorized."""
        async with self._lock:
            if self._tokens.access_token == rejected:
                await self._renew(http, rejected=rejected)
            return self._tokens.access_token

    def accepted(self) -> None:
        self.error = None

    def refused(self, error: UpstreamError) -> None:
        self.error = error

    async def _renew(self, http: httpx.AsyncClient, rejected: str | None) -> None:
        # Claude Code may have refreshed (and rotated) the stored tokens itself: adopt them
        # rather than spend a refresh token it has already replaced.
        stored = await trio.to_thread.run_sync(self._load_quietly)
        now = self._clock()
        if (
            stored is not None
            and stored.access_token
            and stored.access_token not in (self._tokens.access_token, rejected)
            and not needs_refresh(stored, now, self._settings.refresh_margin)
        ):
            self._tokens = stored
            return
        if stored is not None and stored.refresh_token:
            self._tokens = attrs.evolve(self._tokens, refresh_token=stored.refresh_token)
        if not self._tokens.refresh_token:
            error = unauthorized(
                f"the Claude login in {self.source.name} has expired or was refused and has no "
                "refresh token; log in again with `claude`"
            )
            self.error = error
            raise error
        await self._refresh(http)

    def _load_quietly(self) -> Tokens | None:
        try:
            return self.source.load()
        except UpstreamError:
            return None

    async def _refresh(self, http: httpx.AsyncClient) -> None:
        assert self._tokens.refresh_token is not None
        try:
            response = await http.post(
                self._settings.oauth_url,
                json=refresh_body(self._tokens.refresh_token),
                timeout=self._settings.http_timeout,
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"cannot reach the OAuth endpoint to refresh the login: {type(exc).__name__}"
            ) from None
        if response.status_code in (400, 401, 403):
            error = unauthorized(
                f"the OAuth endpoint refused to refresh the login from {self.source.name} "
                f"(HTTP {response.status_code}); log in again with `claude`"
            )
            self.error = error
            raise error
        if response.status_code != 200:
            raise UpstreamError(f"the OAuth refresh failed (HTTP {response.status_code})")
        try:
            body = response.json()
        except (ValueError, RecursionError):
            raise UpstreamError("the OAuth refresh answered with something not JSON") from None
        tokens, org = parse_refresh(body, self._clock(), self._tokens)
        rotated = tokens.refresh_token != self._tokens.refresh_token
        self._tokens = tokens
        self.refreshes += 1
        self.org = self.org or org
        try:
            await trio.to_thread.run_sync(self.source.save, tokens)
        except (OSError, UpstreamError) as exc:
            if rotated:  # the stored refresh token is now spent: say so, loudly
                log.error(
                    "could not write the refreshed Claude login back to %s (%s); run `claude` "
                    "to log in again if it stops working",
                    self.source.name,
                    type(exc).__name__,
                )
        log.info("refreshed the Claude login from %s", self.source.name)

    def status(self) -> dict[str, object]:
        expires = self._tokens.expires_at
        return {
            "source": self.source.name,
            "organization": self.org is not None,
            "expires_in": None if expires is None else round(expires - self._clock()),
            "refreshes": self.refreshes,
        }
