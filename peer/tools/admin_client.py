"""Client of the admin service, shared by the CLI, `hearsay top` and the cluster launcher."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from hearsay.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")
TOKEN_ENV = "HEARSAY_ADMIN_TOKEN"


class AdminError(Exception):
    """A peer's admin service could not answer; the message is one line for the user."""


def _one_line(e: grpc.RpcError, address: str) -> str:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else "") or ""
    details = details.splitlines()[0] if details else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach peer admin at {address} ({details or 'unavailable'})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"peer admin at {address} did not answer in time"
    if code == grpc.StatusCode.UNIMPLEMENTED:  # a gRPC server, but not the admin API: a gossip port?
        return (f"{address} answers gRPC but not the admin API: is it a peer's gossip port? Use its admin port "
                "(--admin-port of `hearsay run`, 7071 by default; the peer's ready line names it)")
    return f"peer admin at {address}: {code.name if code else 'error'}: {details}"


def resolve_token(token: str | None = None, token_file: str | None = None) -> str:
    """Token from the argument, else the file, else HEARSAY_ADMIN_TOKEN; empty if none."""
    if token:
        return token
    if token_file:
        try:
            return Path(token_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise AdminError(f"cannot read a token from {token_file}: {e}") from None
    return os.environ.get(TOKEN_ENV, "")


class AdminClient:
    def __init__(self, address: str, timeout: float = 5.0, token: str = "") -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(address)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn: Callable[..., T], request: object, timeout: float | None = None) -> T:
        try:
            return fn(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise AdminError(_one_line(e, self.address)) from None

    def status(self) -> admin_pb2.StatusResponse:
        return self._call(self._stub.Status, admin_pb2.StatusRequest())

    def list_peers(self) -> admin_pb2.ListPeersResponse:
        return self._call(self._stub.ListPeers, admin_pb2.ListPeersRequest())

    def metrics(self) -> admin_pb2.GetMetricsResponse:
        return self._call(self._stub.GetMetrics, admin_pb2.GetMetricsRequest())

    def save_checkpoint(self) -> admin_pb2.SaveCheckpointResponse:
        return self._call(self._stub.SaveCheckpoint, admin_pb2.SaveCheckpointRequest(), timeout=60)

    def leave(self) -> admin_pb2.LeaveResponse:
        return self._call(self._stub.Leave, admin_pb2.LeaveRequest())

    def set(self, key: str, value: str) -> admin_pb2.SetResponse:
        return self._call(self._stub.Set, admin_pb2.SetRequest(key=key, value=value))

    def download_model(self, timeout: float = 120.0) -> bytes:
        """The peer's current state_dict as torch.save bytes."""
        try:
            chunks = self._stub.DownloadModel(admin_pb2.DownloadModelRequest(), timeout=timeout,
                                              metadata=self._metadata)
            parts, total = [], None
            for chunk in chunks:
                if total is None:
                    total = chunk.total_bytes
                parts.append(chunk.data)
        except grpc.RpcError as e:
            raise AdminError(_one_line(e, self.address)) from None
        data = b"".join(parts)
        if total is not None and len(data) != total:
            raise AdminError(f"model download from {self.address} incomplete: {len(data)} of {total} bytes")
        return data
