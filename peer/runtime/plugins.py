"""Loading user code named by import path (``package.module:factory``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class PluginError(ValueError):
    """A user model or data set that cannot be loaded or used; one line, no traceback needed."""


def load_factory(spec: str, what: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{what} {spec!r}: expected 'module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"{what} {spec!r}: cannot import {module_name!r}: {e} (is its directory on "
                          "PYTHONPATH?)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise PluginError(f"{what} {spec!r}: {module_name!r} has no callable {attr!r}")
    return factory
