"""The hearsay runtime: asyncio daemon, gRPC transport, torch training, CLI."""

__version__ = "0.1.0"
