"""What the registry and the operations need of a session: a local supervisor or a remote one.

Protocols, so that the registry holds the Remote Control bridge's sessions without importing the
bridge (the bridge imports the registry to add them): ``bridge/remote.RemoteSession`` satisfies
:class:`Remote`, ``SessionSupervisor`` satisfies :class:`Session`.
"""

from __future__ import annotations

from typing import Protocol


class Session(Protocol):
    """Any session the registry knows, local or remote."""

    @property
    def id(self) -> str: ...

    async def interrupt(self) -> bool:
        """Stop the running turn; whether there was one."""
        ...


class Remote(Session, Protocol):
    """A session driven elsewhere (Remote Control), followed upstream while somebody looks."""

    active: bool  #: its follower task runs (the registry starts it and sets this)
    #: ``created_at``/``updated_at`` as upstream lists them (None before the first listing)
    upstream_times: tuple[str | None, str | None]

    def follow(self) -> None: ...
    def has_work(self) -> bool: ...
    async def run(self) -> None: ...
    async def send(self, text: str, client_id: str | None = None) -> str: ...
    def set_archived(self, archived: bool) -> None: ...
    def statistics(self) -> dict[str, object]: ...
