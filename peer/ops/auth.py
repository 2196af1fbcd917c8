"""Bearer-token check for the admin server (required when it binds beyond loopback).

Parsing is strict: exactly one ``authorization`` header, the scheme ``Bearer`` (any case,
RFC 7235), one space, then the token with no whitespace around or in it. Anything else is
refused, so padding or a second header can never stand in for the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from peer.runtime.option_checks import check_token

# Health checks reveal nothing and must work for orchestrators that hold no token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = check_token(token, "admin token").encode()

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        if details.method.startswith(OPEN_PREFIXES):
            return True
        values = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        if len(values) != 1:
            return False
        got = values[0].encode() if isinstance(values[0], str) else values[0]
        scheme, space, credential = got.partition(b" ")
        if scheme.lower() != b"bearer" or not space or not credential or any(c in b" \t\r\n" for c in credential):
            return False
        return hmac.compare_digest(credential, self._expected)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or self._allowed(details):
            return handler

        async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin API needs 'authorization: Bearer <token>'")

        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(handler.request_streaming,
                                                                       handler.response_streaming)]
        return make(deny, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
