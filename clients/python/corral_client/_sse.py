"""A small, bounded reader of server-sent events (the WHATWG ``text/event-stream`` format).

Fed the body's bytes as they arrive (by the sync or the async client alike),
it returns the events completed so far. Lines end in ``\\n``, ``\\r\\n`` or a lone
``\\r`` (also when a ``\\r\\n`` is split between two chunks); ``data`` lines are
joined with ``\\n``; comments (``:``, the daemon's keep-alives) are skipped.
Unlike a reader over ``iter_lines``, it never holds more than ``limit``
bytes of one event: a peer that sends one endless line gets
:class:`EventTooLarge`, not all of the client's memory.
"""

from __future__ import annotations

import dataclasses
import re
from typing import List, Optional

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclasses.dataclass
class ServerSentEvent:
    """One event: its ``event`` type (``message`` when none was named), ``data`` and last ``id``."""

    data: str
    event: str = "message"
    id: Optional[str] = None
    retry: Optional[int] = None


class EventTooLarge(ValueError):
    """One event (or one line) is larger than the reader's limit."""


class SSEDecoder:
    """Incremental: :meth:`feed` bytes, get the events they complete."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._line = bytearray()
        self._skip_lf = False
        self._data: List[str] = []
        self._held = 0
        self._event = ""
        self._id: Optional[str] = None
        self._retry: Optional[int] = None

    def feed(self, chunk: bytes) -> List[ServerSentEvent]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._line
        start = len(buf)
        buf += chunk
        out: List[ServerSentEvent] = []
        pos = 0
        # Only the new bytes can hold a line end: the held part has none.
        for m in _EOL.finditer(buf, start):
            event = self._take(bytes(buf[pos : m.start()]))
            pos = m.end()
            if event is not None:
                out.append(event)
        if pos:
            if pos == len(buf) and buf[pos - 1 : pos] == b"\r":
                self._skip_lf = True
            del buf[:pos]
        if len(buf) + self._held > self.limit:
            raise EventTooLarge(f"an event larger than {self.limit} bytes")
        return out

    def _take(self, raw: bytes) -> Optional[ServerSentEvent]:
        line = raw.decode("utf-8", "replace")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._held += len(value) + 1
            if self._held > self.limit:
                raise EventTooLarge(f"an event larger than {self.limit} bytes")
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> Optional[ServerSentEvent]:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data = []
        self._held = 0
        self._event = ""
        return event
