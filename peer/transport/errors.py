"""How an exchange with a partner fails, in the gossip engine's terms.

The engine (peer/runtime/gossip.py) speaks only in packets and these errors; it never
sees a gRPC status. Each transport maps its own failures onto them: the gRPC client
(peer/transport/grpc_transport.py) from the call's status code, the in-memory network
of the simulator (peer/transport/memory.py) from what it simulates.
"""

from __future__ import annotations

import enum


class ExchangeRefused(Exception):
    """The partner refused our packet or failed to answer.

    ``code`` is the transport's own status (a ``grpc.StatusCode`` for both transports),
    kept for logs and tests; the engine branches on the class, never on the code.
    """

    def __init__(self, code: enum.Enum, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class PartnerBusy(ExchangeRefused):
    """Refused before our frame was applied: the partner is exchanging with us, or full.
    The link stays as it is, and a busy partner is not a failing one."""


class PartnerGone(ExchangeRefused):
    """The partner could not be reached, or did not answer in time."""


class PartnerSlow(PartnerGone):
    """The exchange's total deadline passed while the partner was still at it: the link
    is slower than estimated (protocol/deadlines.py backs its estimate off)."""


# Which failures mean what, by status name: the one table both transports use.
_KIND_BY_NAME: dict[str, type[ExchangeRefused]] = {
    "ABORTED": PartnerBusy, "RESOURCE_EXHAUSTED": PartnerBusy,
    "UNAVAILABLE": PartnerGone, "DEADLINE_EXCEEDED": PartnerSlow,
}


def exchange_error(code: enum.Enum, details: str) -> ExchangeRefused:
    """The error for a failed exchange with status ``code`` (an enum member named as gRPC names it)."""
    return _KIND_BY_NAME.get(code.name, ExchangeRefused)(code, details)
