"""One link update at a time per link, with no entry left behind for a link nobody uses.

Link updates must stay in sequence, so an exchange holds its partner's lock in both
directions. The locks are keyed by the partner's address, and a stranger can claim ever
new addresses (issue 14), so a lock exists only while an exchange holds it or waits
for it: the table is bounded by the exchanges in progress, which admission bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager


class LinkLocks:
    """Per-link asyncio locks that are dropped when their last holder or waiter leaves."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # link -> (lock, [users])

    def __len__(self) -> int:
        return len(self._locks)

    def locked(self, link: str) -> bool:
        """Whether an exchange on ``link`` holds its lock now."""
        entry = self._locks.get(link)
        return entry is not None and entry[0].locked()

    @asynccontextmanager
    async def hold(self, link: str) -> AsyncIterator[None]:
        """Hold ``link``'s lock for the block (waiting for it if need be)."""
        entry = self._locks.get(link)
        if entry is None:
            entry = self._locks[link] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1  # counted before waiting, so the entry outlives every waiter
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[link]

    async def take(self, link: str) -> Callable[[], Awaitable[None]]:
        """``hold`` beyond one block: take ``link``'s lock (waiting for it if need be) and return
        its release, for an exchange whose steps run in different tasks (peer/runtime/inbound.py).
        The release may be awaited more than once; only the first releases."""
        stack = AsyncExitStack()
        await stack.enter_async_context(self.hold(link))
        return stack.aclose
