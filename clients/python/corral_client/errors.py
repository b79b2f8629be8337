"""Errors: one class per stable code of the API's ``{"error": {"code", "message"}}``.

Callers catch by meaning (``except NotFound``) rather than by HTTP status, and
a code this client does not know yet still arrives as a :class:`CorralError`
carrying the daemon's code and message.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Type


class CorralError(Exception):
    """An error answered by the daemon, or met while reaching it.

    ``code`` is the API's stable code (``not_found``, ``conflict``, …; for
    errors on this side of the socket: ``unreachable``, ``deadline_exceeded``,
    ``bad_answer``, ``untrusted_socket``),
    ``status`` the HTTP status (``None`` when no answer came, or for an entry
    of a batch answer, which has none of its own).
    """

    default_code = "internal"

    def __init__(self, code: str, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status!r})"


class Invalid(CorralError):
    """400: the request names something badly (an id, a field, a query)."""

    default_code = "invalid"


class Unauthorized(CorralError):
    """401: over TCP without the daemon's bearer token."""

    default_code = "unauthorized"


class Forbidden(CorralError):
    """403: a caller inside one agent acting on another (progress is only for oneself)."""

    default_code = "forbidden"


class NotFound(CorralError):
    """404: no such agent, run, log or route."""

    default_code = "not_found"


class Timeout(CorralError, TimeoutError):
    """408: a wait ran out of time. Also a builtin :class:`TimeoutError`."""

    default_code = "timeout"


class Conflict(CorralError):
    """409: the id is taken by a live agent, or the agent is live and cannot be removed."""

    default_code = "conflict"


class OverBudget(Conflict):
    """409 ``budget``: the spawn would put a team over its ``max_agents`` (the message names the
    team, its budget and its count). A :class:`Conflict`."""

    default_code = "budget"


class SpawnFailed(CorralError):
    """422: the agent's program or files could not be set up (the OS's reason is in the message)."""

    default_code = "spawn_failed"


class InternalError(CorralError):
    """500: corral itself failed."""

    default_code = "internal"


class Unavailable(CorralError):
    """503: the daemon cannot take changes now (its store is failing)."""

    default_code = "unavailable"


class Unreachable(CorralError):
    """No daemon answers and none could be started (or autostart is off)."""

    default_code = "unreachable"


class DeadlineExceeded(Unreachable, TimeoutError):
    """No complete answer came within the call's deadline (the client's
    ``timeout``, plus what the call asked the daemon to take). An
    :class:`Unreachable`, and a builtin :class:`TimeoutError`. Also raised when
    the event stream goes silent longer than its keep-alives allow."""

    default_code = "deadline_exceeded"


class BadAnswer(CorralError):
    """The answer is not one this client understands: not HTTP, not JSON where
    JSON was expected, not the expected shape, or larger than any corral answer.
    The message names the request and what was expected."""

    default_code = "bad_answer"


class UntrustedSocket(CorralError):
    """The socket is not a socket, or is owned by someone other than this user or root.

    Nothing is sent to it: a socket planted in a directory others can write
    would otherwise receive this user's requests, environments included.
    """

    default_code = "untrusted_socket"


_BY_CODE: Dict[str, Type[CorralError]] = {
    cls.default_code: cls
    for cls in (
        Invalid,
        Unauthorized,
        Forbidden,
        NotFound,
        Timeout,
        Conflict,
        OverBudget,
        SpawnFailed,
        InternalError,
        Unavailable,
    )
}
_BY_STATUS: Dict[int, Type[CorralError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: Timeout,
    409: Conflict,
    422: SpawnFailed,
    500: InternalError,
    503: Unavailable,
}


def printable(text: str) -> str:
    """A peer's text fit for a message: control characters escaped, so none
    reaches a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def from_detail(code: str, message: str, status: Optional[int] = None) -> CorralError:
    """The error class for ``code`` (else for ``status``), as the daemon named it."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status or 0, CorralError)
    return cls(code, message, status)


def from_answer(status: int, body: bytes) -> CorralError:
    """The error an HTTP error answer stands for; a body that is not corral's
    error shape (a proxy, a truncated answer) is kept in the message."""
    try:
        detail = json.loads(body)["error"]
        return from_detail(str(detail["code"]), str(detail["message"]), status)
    except (ValueError, KeyError, TypeError):
        text = printable(body[:300].decode("utf-8", "replace").strip())
        cls = _BY_STATUS.get(status, CorralError)
        return cls(cls.default_code, f"HTTP {status}: {text or 'no body'}", status)
