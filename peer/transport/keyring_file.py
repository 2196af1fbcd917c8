"""The cluster keyring as the daemon holds it: read from a file, re-read when the file changes.

Rotation (protocol/keyring.py) is done by editing the file on every peer: install the
new key as a second line, then move it first, then remove the old one. The file is
checked at most once per ``check_every`` seconds (one ``stat``); a change that does not
parse is logged and the keys in use are kept, so a half-written file never locks a
peer out of its own cluster.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from protocol.keyring import Keyring, KeyringError, parse_keyring

log = logging.getLogger(__name__)


def read_keyring(path: str | Path) -> Keyring:
    """The keyring in ``path``; ``KeyringError`` with a one-line reason otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise KeyringError(f"keyring {path}: {e.strerror or e}") from None
    try:
        return parse_keyring(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise KeyringError(f"keyring {path}: not UTF-8 text") from None
    except KeyringError as e:
        raise KeyringError(f"keyring {path}: {e}") from None


class KeyringFile:
    """``current()`` is the keyring now in force; a call re-reads the file if it changed."""

    def __init__(self, path: str | Path, check_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.check_every = check_every
        self.clock = clock
        self._keyring = read_keyring(self.path)
        self._stamp = self._stat()
        self._checked = clock()

    def _stat(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (-1, -1)
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> Keyring:
        now = self.clock()
        if now - self._checked >= self.check_every:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    keyring = read_keyring(self.path)
                except KeyringError as e:
                    log.error("%s; keeping the keys in use (primary %s)", e, self._keyring.primary_id)
                else:
                    if keyring != self._keyring:
                        log.warning("keyring %s reloaded: %d keys, primary %s", self.path, len(keyring.keys),
                                    keyring.primary_id)
                    self._keyring = keyring
        return self._keyring
