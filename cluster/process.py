"""How every Cairn server process runs: logging, uvloop, and a stop event set by SIGINT/SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs `serve(stop)` on uvloop; `stop` is set on SIGINT or SIGTERM, and serve returns after
    shutting down cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(stop)
    asyncio.run(main())
