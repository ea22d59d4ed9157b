"""Suite-wide fixtures: a raw pty pair for serial-line tests, and a safety net: a test that
fails before closing its Store must not hang the run.

aiosqlite serves each connection from a non-daemon thread, so a Store left open keeps the
interpreter from exiting after the last test. Every Store a test opens is closed after it.
"""

from __future__ import annotations

import os
import tty
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.store import Store


@pytest.fixture(autouse=True)
async def _close_stores(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    opened: list[Store] = []
    real_open = Store.open.__func__  # type: ignore[attr-defined]

    async def tracked_open(cls: type[Store], *args: object, **kwargs: object) -> Store:
        store = await real_open(cls, *args, **kwargs)
        opened.append(store)
        return store

    monkeypatch.setattr(Store, "open", classmethod(tracked_open))
    yield
    for store in opened:
        await store.close()  # closing twice is harmless in aiosqlite


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """(master fd, slave path) of a raw pty: the line opens the path, whatever plays the slaves sits on the master end."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)
