"""Client of the admin service, shared by the CLI and the cluster launcher."""

from __future__ import annotations

import grpc

from hearsay.v1 import admin_pb2, admin_pb2_grpc


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
    return f"peer admin at {address}: {code.name if code else 'error'}: {details}"


class AdminClient:
    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def status(self) -> admin_pb2.StatusResponse:
        try:
            return self._stub.Status(admin_pb2.StatusRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise AdminError(_one_line(e, self.address)) from None

    def list_peers(self) -> admin_pb2.ListPeersResponse:
        try:
            return self._stub.ListPeers(admin_pb2.ListPeersRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise AdminError(_one_line(e, self.address)) from None
