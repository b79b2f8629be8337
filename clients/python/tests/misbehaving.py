"""A server on a Unix socket that answers every request badly, the way a
hostile or broken peer would: to test that clients bound what they accept.

Behaviours (one per server):

- ``endless``: a 200 answer whose body never ends (no length; it runs until
  the client hangs up).
- ``drip``: a well-formed answer sent one byte every ``interval`` seconds,
  too long to ever finish in a test.
- ``silent``: reads the request, then says nothing.
- ``notjson``: a complete 200 ``application/json`` answer that is not JSON.
- ``wrongshape``: a complete 200 answer that is JSON, but an array.
- ``badstatus``: an answer whose status line is not HTTP.
- ``endlessevent``: an event stream whose one line never ends.
- ``slowstream``: a 200 whose body is one byte every ``interval`` seconds,
  ``stream_bytes`` of them, then ends (a followed log of a slow agent).
- ``dropsecond``: the first request of each connection gets a proper answer
  (``GET /v1/health``: a health object; anything else: ``[]``) and the
  connection is kept; the next request on it is read and the connection
  closed without an answer — what a daemon closing an idle kept connection
  just as a request goes out looks like.

With ``health_ok``, ``GET /v1/health`` gets a proper answer, so a client that
checks for a daemon first goes on to the request that misbehaves.

Run alone (for measurements): ``python3 misbehaving.py MODE SOCKET [--health-ok]``;
it serves until killed.
"""

from __future__ import annotations

import os
import socket
import socketserver
import sys
import threading
import time
from typing import Any, List, Set

HEALTH = b'{"ok":true}'
NOT_JSON = b"<html>corral? never heard of it</html>\n"
MODES = ("endless", "drip", "silent", "notjson", "wrongshape", "badstatus", "endlessevent", "slowstream", "dropsecond")
FULL_HEALTH = b'{"ok":true,"version":"0","pid":1,"agents":0,"state_dir":"/nowhere","uptime_s":1.0}'


def _answer(status: str, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


class _Handler(socketserver.BaseRequestHandler):
    server: "Misbehaving"

    def _read_request(self) -> bytes:
        """The request's head and body (by its Content-Length), or what came before the peer left."""
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.request.recv(65536)
            if not piece:
                return data
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            piece = self.request.recv(65536)
            if not piece:
                break
            body += piece
        return head

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.open.add(sock)
        try:
            self._misbehave(sock)
        finally:
            self.server.open.discard(sock)

    def _misbehave(self, sock: socket.socket) -> None:
        head = self._read_request()
        self.server.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
        mode = self.server.mode
        try:
            if self.server.health_ok and head.startswith(b"GET /v1/health "):
                sock.sendall(_answer("200 OK", HEALTH, "Connection: close\r\n"))
            elif mode == "endless":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[")
                chunk = b"0," * 32768
                while not self.server.stopping.is_set():
                    sock.sendall(chunk)
            elif mode == "drip":
                body = b'{"agent_id":"' + b"x" * 4096 + b'"}'
                for byte in _answer("200 OK", body):
                    if self.server.stopping.wait(self.server.interval):
                        return
                    sock.sendall(bytes([byte]))
            elif mode == "silent":
                # Holds the connection until the client leaves or the server stops.
                while not self.server.stopping.wait(0.05):
                    pass
            elif mode == "notjson":
                sock.sendall(_answer("200 OK", NOT_JSON))
            elif mode == "wrongshape":
                sock.sendall(_answer("200 OK", b'["not", "an", "object"]'))
            elif mode == "endlessevent":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: ")
                chunk = b"x" * 65536
                while not self.server.stopping.is_set():
                    sock.sendall(chunk)
            elif mode == "slowstream":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
                for _ in range(self.server.stream_bytes):
                    if self.server.stopping.wait(self.server.interval):
                        return
                    sock.sendall(b"x")
            elif mode == "dropsecond":
                body = FULL_HEALTH if head.startswith(b"GET /v1/health ") else b"[]"
                sock.sendall(_answer("200 OK", body))
                second = self._read_request()
                if second:
                    self.server.requests.append(second.split(b"\r\n", 1)[0].decode("latin-1") + " (dropped)")
            elif mode == "badstatus":
                sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        except OSError:
            # The client hung up: what these servers are for.
            pass


class Misbehaving(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The server; ``start()`` serves on a thread, ``close()`` stops it, its
    handler threads and removes the socket."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, path: str, mode: str, *, interval: float = 0.2, health_ok: bool = False, stream_bytes: int = 15
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.interval = interval
        self.stream_bytes = stream_bytes
        self.health_ok = health_ok
        self.stopping = threading.Event()
        self.requests: List[str] = []
        self.open: Set[socket.socket] = set()
        self.path = path
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "Misbehaving":
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        self.shutdown()
        # A handler blocked writing to a client that stopped reading is let go.
        for sock in list(self.open):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Misbehaving":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in MODES:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(MODES)}}} SOCKET [--health-ok]")
    server = Misbehaving(sys.argv[2], sys.argv[1], health_ok="--health-ok" in sys.argv[3:])
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
