"""Checking one option's value against its definition: type, range, choices, text, tokens.

Everything here is driven by the option's ``dataclasses.Field`` (its default's type and
the ``choices``/``range``/``secret`` metadata ``peer.runtime.config._opt`` records), so a new
option is checked without a line of code of its own. Light on purpose: the CLI checks
every flag with it before torch or numpy are imported.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the option."""


# Bounds of a number option: (low, high, low_exclusive). Every number is also finite.
# Options that declare none get these, so no value can reach the peer unbounded (a test
# asks every number option to declare its own).
DEFAULT_FLOAT_RANGE = (0.0, 1e6, False)
DEFAULT_INT_RANGE = (0, 2**31 - 1, False)
# Text options (ids, hosts, paths, tokens): printable UTF-8 of at most this many characters.
MAX_TEXT_CHARS = 4096
MAX_LIST_ITEMS = 1024


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The option's default (lists have a factory)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


MIN_TOKEN_CHARS = 16


def check_token(token: str, source: str) -> str:
    """``token`` if it is usable as an admin bearer token, else ``ConfigError`` (never echoing it)."""
    if not token.strip():
        raise ConfigError(f"{source}: the token is blank")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ConfigError(f"{source}: the token must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{source}: the token has {len(token)} characters, at least {MIN_TOKEN_CHARS} are needed "
                          "(e.g. openssl rand -hex 16)")
    return token


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``options``, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to one short line (a value can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def bounds(f: dataclasses.Field[Any]) -> tuple[float, float, bool] | None:
    """(low, high, low excluded) of a number option, declared or default; ``None`` for others."""
    kind = type(default_of(f))
    if kind not in (int, float):
        return None
    declared = f.metadata.get("range")
    if declared is None:
        return DEFAULT_INT_RANGE if kind is int else DEFAULT_FLOAT_RANGE
    lo, hi, lo_open = declared
    fallback = DEFAULT_INT_RANGE if kind is int else DEFAULT_FLOAT_RANGE
    return (fallback[0] if lo is None else lo, fallback[1] if hi is None else hi, lo_open)


def range_text(limits: tuple[float, float, bool], kind: type) -> str:
    lo, hi, lo_open = limits
    return f"{lo}..{hi}" if kind is int else f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"


def _check_text(name: str, value: Any, shown: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name}: {shown} is not valid UTF-8 text") from None
    if len(value) > MAX_TEXT_CHARS:
        raise ConfigError(f"{name}: {len(value)} characters, at most {MAX_TEXT_CHARS} allowed")
    if not value.isprintable():
        raise ConfigError(f"{name}: {shown} holds control characters")


def check_value(f: dataclasses.Field[Any], value: Any) -> Any:
    """``value`` if option ``f`` can take it; else ``ConfigError`` with a one-line reason.

    Driven only by the option's definition (its default's type, its choices, its range),
    so a new option is checked without a line of code of its own.
    """
    name, kind = f.name, type(default_of(f))
    shown = "the value" if f.metadata.get("secret") else show(value)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"{name}: {shown} is not one of {', '.join(choices)}{hint}")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {shown}")
    elif kind is list:
        if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS:
            raise ConfigError(f"{name}: expected a list of at most {MAX_LIST_ITEMS} strings")
        for item in value:
            _check_text(name, item, show(item))
    elif kind is str:
        _check_text(name, value, shown)
    elif kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
            raise ConfigError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {shown}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: {value} is not a finite number")
        limits = bounds(f)
        lo, hi, lo_open = limits  # type: ignore[misc]
        if value < lo or value > hi or (lo_open and value == lo):
            raise ConfigError(f"{name}: {shown} is out of range, must be in {range_text(limits, kind)}")
    return value
