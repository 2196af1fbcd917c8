"""Simulators: virtual peers that run the daemon's own exchange and membership code on a virtual clock."""
