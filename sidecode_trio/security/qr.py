"""The pairing payload as a terminal QR code, a link and an expiry line."""

from __future__ import annotations

import io
import time
from typing import Any

import segno


def qr_text(data: str) -> str:
    buffer = io.StringIO()
    segno.make(data, error="L").terminal(out=buffer, compact=True)
    return buffer.getvalue()


def render_pairing(offer: dict[str, Any]) -> str:
    payload = offer["payload"]
    minutes = max(0, round((offer["expires_at"] - time.time()) / 60))
    return "\n".join(
        [
            "",
            "Scan to pair a device (one use, expires in "
            f"{minutes} min; grants '{payload['scope']}'):",
            # A phone's camera opens the web app's https link; native clients take either.
            qr_text(offer.get("web_link") or offer["link"]),
            *([f"or open in a browser: {offer['web_link']}"] if offer.get("web_link") else []),
            f"or paste this link into the client: {offer['link']}",
            f"daemon fingerprint: {payload['fp']}  (check it on the device)",
            *(
                [
                    "note: the daemon listens on loopback only; start it with --host 0.0.0.0 so "
                    "devices on your network can reach it"
                ]
                if all(
                    "//127." in u or "//[::1]" in u or "//localhost" in u for u in payload["http"]
                )
                else []
            ),
            "",
        ]
    )
