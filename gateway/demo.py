"""`charger-gateway demo`: the simulated cluster, the demo backend and the daemon, as three real processes.

What `make demo` runs. Each process's output is shown with a prefix; Ctrl-C
(or --duration) stops all three cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from urllib.parse import urlsplit

from gateway.config import load_config

_COLOURS = {"backend": "\033[1;32m", "sim": "\033[36m", "gateway": "\033[33m"}


async def _pump(name: str, stream: asyncio.StreamReader, tty: bool) -> None:
    prefix = f"{name:>7} | "
    if tty:
        prefix = f"{_COLOURS[name]}{prefix}\033[0m"
    async for raw in stream:
        sys.stdout.write(prefix + raw.decode(errors="replace"))
        sys.stdout.flush()


async def _demo(config_path: str, duration: float) -> int:
    config = load_config(config_path)
    # The simulated slaves start afresh at every demo, so the database does too: kept from the last
    # demo, it would see every energy register go back, and rightly raise an alarm for each.
    for suffix in ("", "-wal", "-shm", "-journal"):
        config.storage.path.with_name(config.storage.path.name + suffix).unlink(missing_ok=True)
    url = urlsplit(config.backend.url)
    me = [sys.executable, "-m", "gateway"]
    commands = {
        "backend": me + ["demo-backend", "--host", url.hostname or "127.0.0.1", "--port", str(url.port or 9000)],
        "sim": me + ["simulate", "-c", config_path],
        "gateway": me + ["run", "-c", config_path],
    }
    tty = sys.stdout.isatty()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: dict[str, asyncio.subprocess.Process] = {}
    pumps = []
    crashed: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for name, argv in commands.items():
            # Own process group: Ctrl-C reaches the demo only, which then stops its children in order.
            proc = procs[name] = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
            )
            assert proc.stdout is not None
            pumps.append(asyncio.create_task(_pump(name, proc.stdout, tty)))
            await asyncio.sleep(1.0)  # the backend listens and the pty exists before the daemon opens them
        exits = [asyncio.create_task(p.wait()) for p in procs.values()]
        waiters = [asyncio.create_task(stop.wait()), *exits]
        await asyncio.wait(waiters, timeout=duration or None, return_when=asyncio.FIRST_COMPLETED)
        crashed = [name for name, p in procs.items() if p.returncode not in (None, 0)]
        for w in waiters:
            w.cancel()
    finally:
        for name in ("gateway", "sim", "backend"):  # the daemon first, so it stops against a live cluster
            child = procs.get(name)
            if child is None or child.returncode is not None:
                continue
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
        await asyncio.gather(*pumps, return_exceptions=True)
    if crashed:
        print(f"demo: {', '.join(crashed)} exited with an error", file=sys.stderr)
        return 1
    return 0


def main(config_path: str, duration: float = 0) -> int:
    return asyncio.run(_demo(config_path, duration))
