"""Which event stream a path names: parsed here once for every transport and for tickets."""

from __future__ import annotations

from typing import Final

import attrs

LIST_PATH: Final = "/v1/events"


@attrs.frozen
class EventsPath:
    """``/v1/events`` (``session_id`` None: the session list) or ``/v1/sessions/{id}/events``."""

    session_id: str | None

    @property
    def path(self) -> str:
        """The canonical path (what a stream ticket is issued for)."""
        if self.session_id is None:
            return LIST_PATH
        return f"/v1/sessions/{self.session_id}/events"


def parse_events_path(target: str) -> EventsPath | None:
    """The stream ``target`` names (a query and surrounding slashes are ignored), else None."""
    parts = target.split("?", 1)[0].strip("/").split("/")
    if parts == ["v1", "events"]:
        return EventsPath(None)
    if len(parts) == 4 and parts[:2] == ["v1", "sessions"] and parts[3] == "events" and parts[2]:
        return EventsPath(parts[2])
    return None
