"""The package's error hierarchy.

Every error the daemon raises on purpose is one of these; lower-layer exceptions (trio, sqlite3,
OSError from a child process) are translated where they cross into our code and never leak to a
client. A client error carries a stable ``code`` and the HTTP status that goes with it::

    SidecodeError
    ├── ConfigError                bad configuration (flags, config file): the daemon won't start
    ├── ClientError                the request is at fault; 4xx, shown to the client as-is
    │   ├── BadRequest             400  malformed body, bad field, bad Last-Event-ID
    │   ├── Unauthorized           401  missing or wrong credential
    │   ├── Forbidden              403  wrong Host header, path outside the allowed roots
    │   ├── NotFound               404  unknown session, unknown permission request
    │   ├── MethodNotAllowed       405  a known path, another method (the operation table)
    │   ├── Conflict               409  already answered, session busy in a way that matters
    │   ├── TooLarge               413  a body or an image over its limit
    │   └── Unsupported            422  this session or CLI cannot do that (a remote session's
    │                                   mode, mirroring with a CLI that lacks the flag)
    ├── CLIError                   the Claude Code CLI could not be started or stopped answering
    ├── UpstreamError              the Remote Control API failed or refused our credentials
    ├── ServiceError               systemctl/launchctl refused, or the login service is not ours
    └── StoreError                 the state directory or its database failed
"""

from __future__ import annotations


class SidecodeError(Exception):
    """Root of every error this package raises deliberately."""

    code: str = "internal"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(SidecodeError):
    """The configuration is invalid; ``message`` names the field, e.g. ``bad value @ $.port``."""

    code = "bad_config"


class ClientError(SidecodeError):
    """The client sent something we refuse; the message is safe to show to that client."""

    status = 400
    code = "bad_request"


class BadRequest(ClientError):
    status = 400
    code = "bad_request"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class TooLarge(ClientError):
    status = 413
    code = "too_large"


class Unsupported(ClientError):
    status = 422
    code = "unsupported"


class CLIError(SidecodeError):
    """The ``claude`` process failed to start, exited, or refused a control request."""

    status = 502
    code = "cli_error"


class StoreError(SidecodeError):
    """The SQLite store or the state directory failed (disk full, read-only, corrupt)."""

    status = 503
    code = "store_unavailable"


class UpstreamError(SidecodeError):
    """The Remote Control API failed or refused our credentials (``upstream_unauthorized``)."""

    status = 502
    code = "upstream_error"


class ServiceError(SidecodeError):
    """Installing or driving the login service failed (``sidecode-trio service ...``)."""

    code = "service_error"
