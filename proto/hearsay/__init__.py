"""Generated gRPC stubs for the hearsay wire contract (proto/generate.py)."""
