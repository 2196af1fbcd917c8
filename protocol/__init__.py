"""Pure algorithms of hearsay: no asyncio, no grpc, no sockets, no clocks of their own.

Everything here is a function or a small state machine that takes time and input as
arguments and returns what to send, so the same code runs in the daemon, in the
simulator and in property tests.
"""
