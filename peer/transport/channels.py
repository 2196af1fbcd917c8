"""One gRPC channel per peer address, shared by the gossip and membership clients."""

from __future__ import annotations

import grpc

from peer.transport.tls_identity import PEER_DNS_NAME, TlsIdentity

# Frames are 1 MiB: read the socket in large chunks rather than gRPC's default 8 KiB
# minimum, so a frame is not assembled from a hundred small reads.
STREAM_OPTIONS = (
    ("grpc.experimental.tcp_min_read_chunk_size", 256 << 10),
    ("grpc.experimental.tcp_max_read_chunk_size", 4 << 20),
)
# gRPC's default reconnect backoff grows to 120 s: a partner that restarted on the same
# address would look dead for minutes. Peers come and go; retry quickly instead.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
) + STREAM_OPTIONS


# Peers are dialled by whatever address they were seeded or discovered with (often an IP):
# the name checked against the partner's certificate is the one every peer certificate
# carries, and the cluster CA's signature is what admits it (peer/tools/certs.py).
TLS_CHANNEL_OPTIONS = CHANNEL_OPTIONS + (("grpc.ssl_target_name_override", PEER_DNS_NAME),)


def channel_credentials(identity: TlsIdentity) -> grpc.ChannelCredentials:
    """Mutual TLS as a client: trust only the cluster CA, present this peer's certificate."""
    return grpc.ssl_channel_credentials(root_certificates=identity.ca_pem, private_key=identity.key_pem,
                                        certificate_chain=identity.cert_pem)


class ChannelPool:
    """Channels created on first use; ``forget`` drops one so the next call starts afresh.

    With ``credentials`` (``channel_credentials``) every channel is mutual TLS; without,
    plaintext.
    """

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = credentials

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(address, self._credentials, options=TLS_CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    async def forget(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for address in list(self._channels):
            await self.forget(address)
