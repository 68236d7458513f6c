"""The two places where certd leans on a library's internals, checked for the shape they rely on.

``certd.api.limits.GuardedH11Protocol`` subclasses uvicorn's h11 protocol (no public hook for a
request-head deadline) and ``certd.pki.probe.served_chain`` reads ``ssl``'s private ``_sslobj`` before
Python 3.13 (no public unverified chain). When a new uvicorn or Python changes that shape, these tests
fail first, naming the version and what moved, instead of a slow-loris or probe test failing obscurely.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization

from certd.api import limits
from certd.pki.probe import served_chain
from tests.pki import Node, make_ca, make_leaf
from tests.servers.ports import free_port

PYTHON = f"Python {sys.version.split()[0]} ({ssl.OPENSSL_VERSION})"


def _uvicorn(what: str) -> str:
    return (f"uvicorn {uvicorn.__version__} (h11 {h11.__version__}): {what}; "
            "certd.api.limits.GuardedH11Protocol relies on it (see its docstring) and must be adapted")


def _python(what: str) -> str:
    return f"{PYTHON}: {what}; certd.pki.probe.served_chain relies on it (see its docstring) and must be adapted"


# ------------------------------------------------------------------ ssl: the served chain


@pytest.fixture
def tls_endpoint(tmp_path: Path) -> Iterator[tuple[int, list[Node]]]:
    """A TLS server on loopback serving leaf + intermediate (not the root), as a real endpoint does."""
    root = make_ca("seam root")
    intermediate = make_ca("seam intermediate", root)
    leaf = make_leaf(("seam.example.test",), intermediate)
    pem = tmp_path / "server.pem"
    pem.write_bytes(
        leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
        + leaf.cert.public_bytes(serialization.Encoding.PEM)
        + intermediate.cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)  # hold the connection until the client closes it
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], [leaf, intermediate]
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        server.close()
        thread.join(timeout=5)


def _client(port: int) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                           server_hostname="seam.example.test")


def test_ssl_still_offers_the_unverified_chain_served_chain_reads(tls_endpoint: tuple[int, list[Node]]) -> None:
    port, _ = tls_endpoint
    with _client(port) as tls:
        if sys.version_info >= (3, 13):
            public = getattr(tls, "get_unverified_chain", None)
            assert callable(public), _python("ssl.SSLSocket.get_unverified_chain() is gone")
            chain = public()
            assert isinstance(chain, list) and all(isinstance(c, bytes) for c in chain), _python(
                f"SSLSocket.get_unverified_chain() no longer returns a list of DER bytes (got {chain!r:.200})")
            return
        sslobj = getattr(tls, "_sslobj", None)
        assert sslobj is not None, _python("a connected ssl.SSLSocket has no _sslobj")
        private = getattr(sslobj, "get_unverified_chain", None)
        assert callable(private), _python(f"{type(sslobj).__name__} has no get_unverified_chain()")
        chain = private()
        assert isinstance(chain, list) and chain, _python(
            f"_sslobj.get_unverified_chain() no longer returns a list of certificates (got {chain!r:.200})")
        pem = getattr(chain[0], "public_bytes", lambda: None)()
        assert isinstance(pem, str) and pem.startswith("-----BEGIN CERTIFICATE-----"), _python(
            f"{type(chain[0]).__name__}.public_bytes() no longer returns PEM text by default (got {pem!r:.80})")


def test_served_chain_is_the_chain_as_sent(tls_endpoint: tuple[int, list[Node]]) -> None:
    port, sent = tls_endpoint
    with _client(port) as tls:
        chain = served_chain(tls)
    assert chain == [node.cert for node in sent], _python(
        f"served_chain() saw {len(chain)} certificate(s) where the server sent leaf + intermediate "
        "(1 means the fallback to getpeercert was taken)")


# ------------------------------------------------------------------ uvicorn: the head deadline


def test_uvicorn_h11_protocol_keeps_the_methods_guarded_h11_overrides() -> None:
    from uvicorn.protocols.http import h11_impl

    base = getattr(h11_impl, "H11Protocol", None)
    assert isinstance(base, type), _uvicorn("uvicorn.protocols.http.h11_impl.H11Protocol is gone")
    assert issubclass(limits.GuardedH11Protocol, base)
    for method, params in [("connection_made", ["self", "transport"]), ("connection_lost", ["self", "exc"]),
                           ("on_response_complete", ["self"])]:
        found = getattr(base, method, None)
        assert callable(found), _uvicorn(f"H11Protocol.{method} is gone")
        assert list(inspect.signature(found).parameters) == params, _uvicorn(
            f"H11Protocol.{method}{inspect.signature(found)} changed; expected ({', '.join(params)})")
    source = inspect.getsource(base)
    assert "on_response=self.on_response_complete" in source, _uvicorn(
        "H11Protocol no longer hands on_response_complete to each request cycle as its on_response callback")


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), seconds) == b""
    return time.monotonic() - started


def test_guarded_h11_protocol_reads_the_attributes_it_relies_on_and_cuts_slow_heads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "HEAD_TIMEOUT", 0.3)
    seen: list[limits.GuardedH11Protocol] = []

    class Recording(limits.GuardedH11Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.append(self)
            super().connection_made(transport)

    async def scenario() -> None:
        port = free_port()
        # keep-alive longer than the test: only the head deadline may close these connections
        config = uvicorn.Config(_hello, host="127.0.0.1", port=port, http=Recording, ws="none", lifespan="off",
                                log_level="warning", access_log=False, timeout_keep_alive=60)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.05)
            proto = seen[-1]
            assert isinstance(getattr(proto, "conn", None), h11.Connection), _uvicorn(
                "H11Protocol.conn is no longer the h11.Connection")
            assert getattr(proto, "cycle", "missing") is None, _uvicorn(
                "H11Protocol.cycle is not None before the first request")
            assert await _closed_within(reader, 3) < 2, "a silent connection outlived the head deadline"
            writer.close()

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: seam\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"ok"
            proto = seen[-1]
            assert getattr(getattr(proto, "cycle", None), "response_complete", None) is True, _uvicorn(
                "H11Protocol.cycle.response_complete is not True once the response is sent")
            assert proto.conn.their_state is h11.IDLE, _uvicorn(
                f"after a complete exchange the h11 state is {proto.conn.their_state}, not IDLE")
            assert await _closed_within(reader, 3) < 2, "an idle keep-alive connection outlived the head deadline"
            writer.close()
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
