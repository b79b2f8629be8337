"""httpx transports whose every socket operation keeps to one deadline per call.

httpx's timeouts bound each operation (a connect, a read, a write): a peer
that drips one byte a second renews a read timeout forever. corral's client
promises one deadline for the whole exchange instead, so these transports
run httpcore's connection pool (as ``httpx.HTTPTransport(uds=...)`` does)
on a network backend that bounds each operation by what is left of the
current call's deadline, :data:`DEADLINE` (a context variable: each thread,
and each asyncio task, has its own). Outside a deadline the request's own
timeouts apply, as usual.

The backend also checks a Unix socket before it connects to it (see
:func:`check_socket`): each new connection, not only the first.
Connections are kept and reused between calls (one pool per client).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from contextvars import ContextVar
from typing import Any, AsyncIterator, Iterable, Iterator, Optional, cast

import anyio
import httpcore
import httpx

from .errors import UntrustedSocket

#: The monotonic time by which the current call must be done (``None``: no deadline).
DEADLINE: ContextVar[Optional[float]] = ContextVar("corral_client_deadline", default=None)

#: Idle connections are dropped after this long: before the daemon's 10 s header timeout closes them.
KEEPALIVE_S = 5.0
MAX_IDLE_CONNECTIONS = 16


class DeadlinePassed(httpcore.TimeoutException):
    """The call's deadline passed before a socket operation could start."""


@contextlib.contextmanager
def deadline(at: Optional[float]) -> Iterator[None]:
    """Socket operations inside keep to ``at`` (a :func:`time.monotonic` time)."""
    token = DEADLINE.set(at)
    try:
        yield
    finally:
        DEADLINE.reset(token)


def _bounded(timeout: Optional[float]) -> Optional[float]:
    at = DEADLINE.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise DeadlinePassed("the call's deadline has passed")
    return left if timeout is None or timeout > left else timeout


def check_socket(path: str) -> None:
    """Refuses a socket this user cannot trust before anything is sent to it
    (the daemon applies the same rule to its state dir). A missing socket
    passes: connecting then fails in the usual words, or starts a daemon."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UntrustedSocket(
            "untrusted_socket", f"refusing to talk to {path}: it is not a socket (a symlink, file or directory)"
        )
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UntrustedSocket(
            "untrusted_socket",
            f"refusing to talk to {path}: it is owned by uid {st.st_uid}, not by this user (uid {me}) or root",
        )


# -- sync ----------------------------------------------------------------------


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._inner.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: Optional[str] = None, timeout: Optional[float] = None
    ) -> Any:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _bounded(timeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None
    ) -> httpcore.NetworkStream:
        check_socket(path)
        return _Stream(self._inner.connect_unix_socket(path, _bounded(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Body(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _core_request(request: httpx.Request) -> httpcore.Request:
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=cast(Any, request.stream),
        extensions=request.extensions,
    )


class Transport(httpx.BaseTransport):
    """HTTP/1.1 to one Unix socket (``uds``) or over TCP, keeping to :data:`DEADLINE`."""

    def __init__(self, uds: Optional[str] = None) -> None:
        self._pool = httpcore.ConnectionPool(
            uds=uds,
            network_backend=_Backend(),
            max_connections=None,
            max_keepalive_connections=MAX_IDLE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_S,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self._pool.handle_request(_core_request(request))
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_Body(cast(Iterable[bytes], resp.stream)),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        self._pool.close()


# -- async ---------------------------------------------------------------------


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return await self._inner.read(max_bytes, _bounded(timeout))

    async def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        await self._inner.write(buffer, _bounded(timeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: Optional[str] = None, timeout: Optional[float] = None
    ) -> Any:
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, _bounded(timeout), local_address, socket_options)
        return _AsyncStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None
    ) -> httpcore.AsyncNetworkStream:
        check_socket(path)
        return _AsyncStream(await self._inner.connect_unix_socket(path, _bounded(timeout), socket_options))

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


class AsyncTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`Transport` (asyncio or trio, through anyio)."""

    def __init__(self, uds: Optional[str] = None) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            uds=uds,
            network_backend=_AsyncBackend(),
            max_connections=None,
            max_keepalive_connections=MAX_IDLE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_S,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self._pool.handle_async_request(_core_request(request))
        return httpx.Response(
            status_code=resp.status, headers=resp.headers, stream=_AsyncBody(resp.stream), extensions=resp.extensions
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
