"""Whether a peer can bind its ports, asked before anything slow happens.

gRPC's own bind failure is a vague C-core log line, and it comes only after the data
set and the model are loaded; a taken port is better reported at once, in one line.
"""

from __future__ import annotations

import errno
import socket

from peer.runtime.config import PeerConfig


class StartError(Exception):
    """The peer cannot start (a port taken, an address that cannot be bound); one line for the user."""


def check_port_free(what: str, host: str, port: int) -> None:
    """``StartError`` naming ``what`` if ``host:port`` cannot be bound now (taken, or not an
    address of this machine). Port 0 always can."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise StartError(f"{what} address {host!r} cannot be resolved: {e}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT owns nothing
            try:
                probe.bind(address)
            except OSError as e:
                hint = " (another process, perhaps another peer, listens there)" if e.errno == errno.EADDRINUSE else ""
                raise StartError(f"{what} port {host}:{port}: {e.strerror or e}{hint}") from None


def check_ports(config: PeerConfig) -> None:
    """Every port ``config`` asks for, checked before the peer loads anything."""
    check_port_free("gossip", config.host, config.port)
    check_port_free("admin", config.admin_host, config.admin_port)
    if config.metrics_port > 0:
        check_port_free("metrics", config.metrics_host, config.metrics_port)
