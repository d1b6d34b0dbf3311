"""Operation requests and responses: the bodies clients send and get back (any transport)."""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from . import share_repr
from .snapshot import SessionInfo

PROTOCOL_VERSION: Final = 1
MAX_TEXT_CHARS: Final = 200_000


@attrs.frozen(repr=False)
class Image:
    """An image for a prompt: PNG, JPEG, GIF or WebP, base64 (at most 5 MB of base64 text)."""

    media_type: str
    data: str


@attrs.frozen(repr=False)
class CreateSession:
    cwd: str
    prompt: str | None = None
    model: str | None = None
    permission_mode: str = "default"
    client_id: str | None = None
    images: list[Image] = attrs.field(factory=list)
    title: str | None = None


@attrs.frozen(repr=False)
class SendMessage:
    text: str
    client_id: str | None = None
    images: list[Image] = attrs.field(factory=list)


@attrs.frozen(repr=False)
class AnswerPermission:
    """Allow or deny a pending tool request.

    ``suggestions`` applies some of the request's suggested rules or mode switches (by index);
    ``answers`` answers an ``AskUserQuestion`` (question text -> the chosen label, or labels for
    a multi-select); ``updated_input`` runs the tool with edited input; ``interrupt`` (deny
    only) also stops the turn."""

    behavior: Literal["allow", "deny"]
    message: str = ""
    updated_input: dict[str, Any] | None = None
    updated_permissions: list[Any] | None = None
    interrupt: bool = False
    suggestions: list[int] = attrs.field(factory=list)
    answers: dict[str, str | list[str]] | None = None


@attrs.frozen(repr=False)
class UpdateSession:
    permission_mode: str | None = None
    model: str | None = None
    title: str | None = None
    archived: bool | None = None


@attrs.frozen(repr=False)
class SetMirror:
    """Mirror the session to Claude Code's Remote Control (claude.ai) or stop mirroring it.
    ``name`` is the Remote Control session's name (default: the current one, else the title)."""

    enabled: bool
    name: str | None = None


@attrs.frozen(repr=False)
class MirrorReply:
    """The state now in effect: the CLI was restarted with it and confirmed it (``changed``),
    or it already was so and nothing was restarted."""

    enabled: bool
    name: str | None
    changed: bool
    session: SessionInfo


@attrs.frozen(repr=False)
class DeleteReply:
    id: str
    log_removed: bool


@attrs.frozen(repr=False)
class FolderEntry:
    name: str
    path: str  #: absolute real path (a symlink's target)
    kind: str  #: "dir" | "file"
    hidden: bool
    git: bool = False  #: a directory that holds a .git entry


@attrs.frozen(repr=False)
class FolderListing:
    path: str | None  #: the real path listed; None for the list of roots
    parent: str | None  #: the parent, if it is still inside a root
    root: str | None  #: the (outermost) allowed root this path is under
    entries: list[FolderEntry]
    truncated: bool = False  #: there were more than ``limit`` entries


@attrs.frozen(repr=False)
class RecentFolder:
    path: str
    last_used: float
    sessions: int


@attrs.frozen(repr=False)
class RecentFolders:
    folders: list[RecentFolder]


@attrs.frozen(repr=False)
class ToolOutput:
    """The whole output of one tool call (events carry at most a bounded part of it)."""

    tool_use_id: str
    output: str
    chars: int


@attrs.frozen(repr=False)
class SessionCreatedReply:
    session: SessionInfo
    message_id: str | None = None
    created: bool = True  #: False when ``client_id`` repeated an earlier create (nothing new)


@attrs.frozen(repr=False)
class MessageAccepted:
    message_id: str
    created: bool  #: False when ``client_id`` repeated an earlier message (nothing was queued)


@attrs.frozen(repr=False)
class InterruptReply:
    interrupted: bool


@attrs.frozen(repr=False)
class SessionList:
    sessions: list[SessionInfo]


@attrs.frozen(repr=False)
class ErrorDetail:
    code: str
    message: str


@attrs.frozen(repr=False)
class ErrorReply:
    error: ErrorDetail


@attrs.frozen(repr=False)
class CertificateHash:
    """A TLS certificate the daemon uses or will use, vouched for by its identity key."""

    sha256: str  #: hex SHA-256 of the certificate (DER)
    signature: str  #: base64url Ed25519 signature of b"sidecode-trio cert v1\n" + the raw hash
    not_before: float
    not_after: float


@attrs.frozen(repr=False)
class DaemonInfo:
    protocol: int
    version: str
    public_key: str  #: base64url Ed25519 identity key
    fingerprint: str
    certificates: list[CertificateHash]  #: the current one first, then the next (if made)
    name: str = "sidecode-trio"
    #: WebTransport session URLs (``https://<address>:<udp port>/v1/wt``); empty when off
    quic: list[str] = attrs.field(factory=list)
    #: the permission modes a paired device may choose (the daemon's ``remote_modes``); a
    #: device's scope narrows them further (``chat``: up to ``default``; ``admin``: all)
    remote_modes: list[str] = attrs.field(factory=list)


@attrs.frozen(repr=False)
class PairRequest:
    """Completes pairing: proof of the one-time secret (HMAC) and of the device key (signature)."""

    secret_id: str
    device_public_key: str  #: base64url Ed25519 public key
    name: str
    mac: str  #: base64url HMAC-SHA256(secret, transcript)
    signature: str  #: base64url Ed25519 signature of the transcript by the device key
    #: base64url X25519 public key (32 bytes) for sealed signaling, bound into the transcript;
    #: absent: the box key is derived from the Ed25519 key (PROTOCOL.md §2, §13)
    box_public_key: str | None = None


@attrs.frozen(repr=False)
class DeviceView:
    id: str
    name: str
    fingerprint: str
    scope: str
    paired_at: float
    last_seen: float | None = None
    revoked_at: float | None = None
    kind: str = "key"  #: "key" (Ed25519) or "secret" (a WatchCode-compatible device)


@attrs.frozen(repr=False)
class WatchCodeDeviceRequest:
    name: str = "WatchCode"
    scope: Literal["approve", "chat", "admin"] = "chat"


@attrs.frozen(repr=False)
class WatchCodeDeviceReply:
    """The secret is shown once: enter it in the WatchCode app as its relay secret."""

    device: DeviceView
    secret: str
    urls: list[str]


@attrs.frozen(repr=False)
class PairReply:
    device: DeviceView
    daemon: DaemonInfo


@attrs.frozen(repr=False)
class PairingOfferRequest:
    scope: Literal["approve", "chat", "admin"] = "chat"
    ttl: float = 300.0


@attrs.frozen(repr=False)
class DeviceList:
    devices: list[DeviceView]


@attrs.frozen(repr=False)
class DeviceUpdate:
    scope: Literal["approve", "chat", "admin"]


@attrs.frozen(repr=False)
class RevokeReply:
    device: DeviceView
    closed_streams: int


@attrs.frozen(repr=False)
class AuditView:
    at: float
    kind: str
    device_id: str | None
    detail: str


@attrs.frozen(repr=False)
class AuditLog:
    entries: list[AuditView]


@attrs.frozen(repr=False)
class TicketRequest:
    path: str


@attrs.frozen(repr=False)
class TicketReply:
    ticket: str
    expires_at: float


@attrs.frozen(repr=False)
class PushKeys:
    p256dh: str  #: base64url P-256 public key of the browser (65 bytes, uncompressed)
    auth: str  #: base64url authentication secret (16 bytes)


@attrs.frozen(repr=False)
class PushSubscriptionRequest:
    """A browser's ``PushSubscription.toJSON()``; ``expirationTime`` is ignored."""

    endpoint: str
    keys: PushKeys


@attrs.frozen(repr=False)
class PushSubscription:
    id: str
    device_id: str | None  #: None: the local owner's
    endpoint: str
    created_at: float
    last_delivered: float | None = None
    failures: int = 0  #: deliveries failed since the last one that worked


@attrs.frozen(repr=False)
class PushSubscriptionList:
    public_key: str  #: the VAPID key to subscribe with (``applicationServerKey``), base64url
    subscriptions: list[PushSubscription]


@attrs.frozen(repr=False)
class PushSubscriptionRemoved:
    id: str
    removed: bool = True


@attrs.frozen(repr=False)
class VapidKeyReply:
    public_key: str  #: base64url uncompressed P-256 point: the ``applicationServerKey``


@attrs.frozen(repr=False)
class PushTestReply:
    queued: int  #: pushes queued (one per subscription of the asking device)


share_repr(globals())  # one __repr__ for all, not one compiled per class (see __init__)
