"""Container health probe: ask the peer's admin server for its gRPC health status.

Why a file and not a `hearsay` subcommand: it needs nothing but grpcio and
grpcio-health-checking (dependencies of hearsay already), starts fast, and works
whatever the admin token is, because the admin server serves grpc.health.v1.Health
without one. The Dockerfile's HEALTHCHECK runs it inside the container, so the
loopback address reaches the admin server even when it binds only 127.0.0.1.

Exit 0 when the peer answers SERVING, 1 otherwise (Docker's healthy / unhealthy).
Target: $HEARSAY_HEALTH_ADDRESS, else 127.0.0.1:$HEARSAY_ADMIN_PORT (7071).
"""

from __future__ import annotations

import os
import sys


def target() -> str:
    """The admin address to probe: explicit, else loopback on the configured admin port."""
    explicit = os.environ.get("HEARSAY_HEALTH_ADDRESS", "")
    return explicit or f"127.0.0.1:{os.environ.get('HEARSAY_ADMIN_PORT') or '7071'}"


def main() -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = target()
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3.0)
    except grpc.RpcError as e:
        print(f"unhealthy: {address}: {e.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
