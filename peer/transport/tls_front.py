"""Mutual TLS in front of the gossip server, with every refused handshake seen and counted.

gRPC's own TLS server (``ssl_server_credentials(require_client_auth=True)``) refuses a
bad client inside its C core: Python never learns that anyone tried, from where, or
why. A swarm must report refused attempts, so the TLS handshake happens here instead,
on asyncio: the front listens on the public gossip address, runs the handshake with
the cluster CA as the only trust anchor and a client certificate required, and only
then connects the caller through to the real gRPC server, which listens on a unix
socket in a private (0700) directory. Nothing on the host can reach that socket
without being root or this user, so no one bypasses TLS through loopback.

Before the handshake the front peeks at the first byte: a caller that sends nothing
and hangs up (a TCP health check) is not an attempt, and one whose first byte does not
open a TLS record is speaking plaintext. After the handshake the front only moves
bytes: HTTP/2 and gRPC are end to end between the caller and the gRPC server. Reads are large (the TLS layer decrypts up to
256 KiB at a time) and backpressure is the transports' own: when one side's write
buffer fills, the other side stops reading until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

from peer.transport.tls_identity import TlsIdentity
from protocol.errors import Refusal

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_SECONDS = 10.0
BACKLOG = 128
TLS_HANDSHAKE_RECORD = 0x16  # the content type of the record that opens every TLS connection
PEEK_BYTES = 8
# Bytes a side may have queued for the other before that other stops reading. Frames
# are 1 MiB: a few of them in flight keep both sockets busy without unbounded memory.
WRITE_BUFFER_HIGH = 4 << 20
WRITE_BUFFER_LOW = 1 << 20

# OpenSSL's reason for a failed handshake -> the label it is counted under.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL",
                      "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_RECORD", "UNEXPECTED_MESSAGE"})
_NO_CERTIFICATE = frozenset({"PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"})
# Alerts a caller sends when *our* certificate is not signed by a CA it trusts.
_UNKNOWN_CA_ALERTS = frozenset({"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                                "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"})
_EXPIRED_ALERTS = frozenset({"SSLV3_ALERT_CERTIFICATE_EXPIRED"})
# X509_V_ERR_* codes for a certificate outside its validity period.
_EXPIRED_VERIFY_CODES = frozenset({9, 10})

# tls_aborted: the caller hung up in the middle of the handshake, after our certificate,
# without an alert. gRPC's TLS client does exactly that when our certificate is not from
# a CA it trusts, i.e. a peer of another cluster; OpenSSL clients send unknown_ca instead.
TLS_REASONS = ("tls_unknown_ca", "tls_no_certificate", "tls_expired", "tls_not_tls", "tls_aborted",
               "tls_timeout", "tls_other")


class TlsRefused(Refusal):
    """A connection whose TLS handshake failed; ``reason`` is one of ``TLS_REASONS``."""

    def __init__(self, reason: str, source: str, detail: str) -> None:
        super().__init__(f"TLS handshake from {source} failed: {detail}")
        self.reason = reason
        self.source = source


def classify(error: BaseException) -> str:
    """The label a failed handshake is counted under (the detail goes to the log)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return "tls_expired" if error.verify_code in _EXPIRED_VERIFY_CODES else "tls_unknown_ca"
    if isinstance(error, ssl.SSLEOFError):
        return "tls_aborted"
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None) or ""
        if reason in _NOT_TLS:
            return "tls_not_tls"
        if reason in _NO_CERTIFICATE:
            return "tls_no_certificate"
        if reason in _UNKNOWN_CA_ALERTS:
            return "tls_unknown_ca"
        if reason in _EXPIRED_ALERTS:
            return "tls_expired"
        return "tls_other"
    if isinstance(error, TimeoutError | ConnectionAbortedError):
        return "tls_timeout"  # asyncio aborts a handshake that outlives its timeout this way
    if isinstance(error, ConnectionError) or (isinstance(error, OSError) and error.errno == errno.EPIPE):
        return "tls_aborted"  # asyncio reports a peer that closed mid-handshake as ConnectionResetError
    return "tls_other"


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """TLS 1.2+, a client certificate signed by the cluster CA required, ALPN ``h2`` (gRPC
    clients refuse a server that does not select it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=identity.ca_pem.decode("ascii"))
    context.load_cert_chain(identity.cert_path, identity.key_path)
    context.set_alpn_protocols(["h2"])
    return context


OnRefused = Callable[[TlsRefused], None]


def _log_refused(refused: TlsRefused) -> None:
    log.warning("refused a connection (%s): %s", refused.reason, refused.message)


class TlsFront:
    """Terminates mutual TLS on a TCP address and pipes each accepted connection to a
    private unix socket (``backend_target``, where the gRPC server must listen).

    ``on_refused`` gets every failed handshake (the node counts them with the other
    refusals; by default they are logged). A connection closed before it sent a byte
    (a TCP health check, a port scan) is not a handshake and is not counted.
    """

    def __init__(self, context: ssl.SSLContext, on_refused: OnRefused = _log_refused,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS) -> None:
        self._context = context
        self._on_refused = on_refused
        self._handshake_timeout = handshake_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="hearsay-gossip-"))  # mkdtemp: mode 0700
        self.backend_path = self._dir / "gossip.sock"
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pipes: set[_Pipe] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        # gRPC's peer string of each piped connection -> the caller's certificate identity:
        # each backend connection is bound to its own socket path, so the gRPC handler can
        # ask who is on the other end (peer/transport/identity.py).
        self._certificates: dict[str, str] = {}
        self._next_path = 0
        self.accepted = 0
        self.refused = 0

    @property
    def backend_target(self) -> str:
        """The gRPC server's bind address."""
        return f"unix:{self.backend_path}"

    async def bind(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (``port`` 0 picks one) and return the port. Callers queue
        in the backlog until ``start``: call it once the gRPC server is serving."""
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE))[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        return int(listener.getsockname()[1])

    def start(self) -> None:
        """Accept connections on the bound address."""
        if self._listener is None:
            raise RuntimeError("TlsFront.start before bind")
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(self._listener))

    def stop_listening(self) -> None:
        """Accept no new connections; those already piped carry on."""
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def close(self) -> None:
        """Stop listening, cut every connection, remove the private socket directory."""
        accepting = self._accepting
        self.stop_listening()
        for task in list(self._handshakes):
            task.cancel()
        for pipe in list(self._pipes):
            pipe.close()
        pending = [t for t in (accepting, *self._handshakes) if t is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- one connection ------------------------------------------------------------------------
    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("TLS front: cannot accept (%s); retrying", e)
                    await asyncio.sleep(0.1)  # back off until descriptors free up, as asyncio's own server does
                    continue
                raise
            conn.setblocking(False)
            task = loop.create_task(self._handshake(conn, _address(peer)))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _refuse(self, reason: str, source: str, detail: str) -> None:
        self.refused += 1
        self._on_refused(TlsRefused(reason, source, detail))

    async def _handshake(self, conn: socket.socket, source: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Look at the first byte before TLS sees it: nothing at all is a probe, not an
            # attempt; anything but a handshake record (0x16) is someone speaking plaintext.
            first = await _peek(loop, conn, self._handshake_timeout)
        except asyncio.CancelledError:  # the front is closing
            conn.close()
            raise
        except TimeoutError:
            conn.close()
            self._refuse("tls_timeout", source, f"sent nothing for {self._handshake_timeout:g} s")
            return
        except OSError as e:
            conn.close()
            log.debug("TLS front: connection from %s failed before the handshake: %s", source, e)
            return
        if not first:
            conn.close()
            log.debug("TLS front: %s connected and closed without a word", source)
            return
        if first[0] != TLS_HANDSHAKE_RECORD:
            conn.close()
            self._refuse("tls_not_tls", source, f"not a TLS handshake (first bytes {first[:8]!r})")
            return
        try:
            await loop.connect_accepted_socket(lambda: _ClientSide(self, source), conn, ssl=self._context,
                                               ssl_handshake_timeout=self._handshake_timeout)
        except Exception as e:  # noqa: BLE001 - every failed handshake is a refusal to count, whatever raised
            # No conn.close() here: the loop's transport owns the descriptor now and closes
            # it (uvloop only once libuv lets go of it; closing it under libuv could close a
            # descriptor already reused by the next connection).
            self._refuse(classify(e), source, _detail(e))

    def _connected(self, pipe: _Pipe) -> None:
        """A handshake succeeded: connect the caller through to the gRPC server."""
        self._pipes.add(pipe)
        task = asyncio.get_running_loop().create_task(self._connect_backend(pipe))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def certificate_of(self, peer: str) -> str:
        """The certificate identity of the caller behind gRPC peer ``peer`` ("" if unknown)."""
        return self._certificates.get(peer, "")

    async def _connect_backend(self, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        self._next_path += 1
        path = self._dir / f"c{self._next_path}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))  # our end gets a name: the gRPC server's peer string for this caller
            sock.setblocking(False)
            await loop.sock_connect(sock, str(self.backend_path))
            pipe.bound(f"unix:{path}", path)
            self._certificates[pipe.peer] = certificate_identity(pipe.tls)
            await loop.create_unix_connection(lambda: _BackendSide(pipe), sock=sock)
        except OSError as e:
            sock.close()
            log.error("TLS front: cannot reach the gossip server on %s: %s", self.backend_path, e)
            pipe.close()
            return
        self.accepted += 1
        log.debug("TLS connection from %s (%s)", pipe.source, _peer_name(pipe.tls))


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout: float) -> bytes:
    """The first bytes waiting on ``conn``, left in place for the TLS layer (b"" at EOF)."""
    readable = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), ready)
    try:
        await asyncio.wait_for(readable, timeout)
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(PEEK_BYTES, socket.MSG_PEEK)


class _Pipe:
    """One accepted connection: the TLS transport to the caller and the unix socket to gRPC."""

    def __init__(self, front: TlsFront, tls: asyncio.Transport, source: str) -> None:
        self.front = front
        self.tls = tls
        self.backend: asyncio.Transport | None = None
        self.source = source
        self._early: list[bytes] = []  # decrypted before the unix socket was connected
        self._closed = False
        self.peer = ""  # the gRPC server's peer string for this connection
        self._path: Path | None = None

    def bound(self, peer: str, path: Path) -> None:
        self.peer, self._path = peer, path

    def backend_connected(self, transport: asyncio.Transport) -> None:
        if self._closed:
            transport.abort()
            return
        self.backend = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        if self._early:
            transport.write(b"".join(self._early))
            self._early.clear()

    def from_client(self, data: bytes) -> None:
        if self._closed:
            return
        if self.backend is None:
            self._early.append(data)  # bounded: HTTP/2 flow control holds the caller to its window
        else:
            self.backend.write(data)

    def from_backend(self, data: bytes) -> None:
        if not self._closed:
            self.tls.write(data)

    def close(self) -> None:
        """Close both sides (each flushes what it has queued first)."""
        if self._closed:
            return
        self._closed = True
        self.front._pipes.discard(self)
        self.front._certificates.pop(self.peer, None)
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        self.tls.close()
        if self.backend is not None:
            self.backend.close()


class _ClientSide(asyncio.Protocol):
    """The application side of the caller's TLS connection (made once the handshake succeeded)."""

    def __init__(self, front: TlsFront, source: str) -> None:
        self.front = front
        self.source = source
        self.pipe: _Pipe | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport has the Transport methods without being a subclass of it.
        tls = cast(asyncio.Transport, transport)
        tls.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        self.pipe = _Pipe(self.front, tls, self.source)
        self.front._connected(self.pipe)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.from_client(data)

    def eof_received(self) -> bool:
        if self.pipe is not None:
            self.pipe.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe is not None:
            self.pipe.close()

    # The caller reads slower than gRPC writes: stop reading from gRPC until it catches up.
    def pause_writing(self) -> None:
        if self.pipe is not None and self.pipe.backend is not None:
            self.pipe.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe is not None and self.pipe.backend is not None and not self.pipe.backend.is_closing():
            self.pipe.backend.resume_reading()


class _BackendSide(asyncio.Protocol):
    """The unix-socket connection to the gRPC server for one caller."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pipe.backend_connected(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.pipe.from_backend(data)

    def eof_received(self) -> bool:
        self.pipe.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.close()

    # gRPC reads slower than the caller writes: stop decrypting the caller's bytes meanwhile.
    def pause_writing(self) -> None:
        self.pipe.tls.pause_reading()

    def resume_writing(self) -> None:
        if not self.pipe.tls.is_closing():
            self.pipe.tls.resume_reading()


def _address(peername: object) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


def _detail(error: BaseException) -> str:
    if classify(error) == "tls_aborted":
        return "the caller hung up during the handshake (a gRPC peer does when our certificate is not from its CA)"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError) and getattr(error, "reason", None):
        return str(error.reason).lower().replace("_", " ")
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def certificate_identity(tls: asyncio.BaseTransport) -> str:
    """``cert:<common name>/<first 16 hex of the certificate's SHA-256>``: who the caller is."""
    name = _peer_name(tls)
    der = b""
    with contextlib.suppress(Exception):
        der = tls.get_extra_info("ssl_object").getpeercert(binary_form=True) or b""
    return f"cert:{name}/{hashlib.sha256(der).hexdigest()[:16]}"


def _peer_name(tls: asyncio.BaseTransport) -> str:
    """The caller's certificate subject (common name), for the debug log."""
    with contextlib.suppress(Exception):
        cert = tls.get_extra_info("peercert") or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
    return "?"
