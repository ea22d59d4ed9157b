"""Modbus line helpers shared by the tests: real owner tasks (the pty_pair fixture is in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.modbus_line import ModbusLine


@contextlib.asynccontextmanager
async def running(*lines: ModbusLine) -> AsyncIterator[None]:
    """Run the lines' owner tasks in a TaskGroup, as the daemon does, and stop them afterwards."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(line.run()) for line in lines]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
