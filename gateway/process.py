"""The ``hopgate server`` / ``hopgate client`` process: one gateway until a signal.

``serve`` is what the CLI runs: it starts a ``Gateway``, waits for SIGINT or
SIGTERM, then drains and stops it (``Gateway.drain``: ready says 503 at once,
hop peers are told GOAWAY and move their new streams to another instance,
the listener stays open for what is in flight; held requests get
``--shutdown-grace``); a second signal exits at once.  The signal handlers it installs are removed
again on the way out.  ``event_loop_factory`` is the loop ``--event-loop``
picks for it; ``tune_gc`` and ``tune_malloc`` set the collector and the C
allocator up for a long-running server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import platform
import signal
from collections.abc import Callable
from typing import Final

from gateway.config import Config, ConfigError, EventLoop
from gateway.server import Gateway

__all__ = [
    "GC_THRESHOLDS",
    "MALLOC_MMAP_THRESHOLD",
    "MALLOC_TRIM_THRESHOLD",
    "event_loop_factory",
    "serve",
    "tune_gc",
    "tune_malloc",
]

log = logging.getLogger("hopgate")

#: Young-generation threshold and the two older ones' (CPython's default is
#: 700, 10, 10). Every request allocates a few hundred tracked objects, so at
#: the default a gateway at 100 clients spent 5-9% of its CPU in collections
#: that found little: at these, ~2 ms a run; 147 -> 137 us of server-gateway
#: CPU per tunnelled request in a same-minute A/B. Garbage held in cycles waits
#: at most ~10,000 allocations longer; expired sessions still get a full
#: ``gc.collect`` (``transports/admission.py``).
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    """Fewer collections for a long-running gateway; called once, before it serves.

    ``gc.freeze`` moves what importing and configuring created (modules,
    classes, settings: alive until exit) out of the collector's sight, so an
    old-generation collection no longer walks all of it each time.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: Free bytes at the top of the C heap that glibc's malloc keeps instead of
#: giving back to the kernel (its default: 128 KiB, then adjusted as it goes).
#: A gateway moving 64 KiB messages frees a few such buffers every loop turn
#: and allocates them again the next: at the default each turn gave the memory
#: back (``brk``) and faulted it in again, zeroed by the kernel. The Python hop
#: client of ``bench/suite_msgload.py`` made 9,271 ``brk`` calls for 16,384
#: messages over a long-poll hop; with this and MALLOC_MMAP_THRESHOLD its
#: system CPU fell 1.76 -> 0.18 s per GiB and the row went 264-288 ->
#: 583-770 MB/s (both processes tuned, alternating runs).
MALLOC_TRIM_THRESHOLD: Final = 16 * 1024 * 1024
#: Allocations from this size on get pages of their own (mmap), given back
#: when freed; smaller ones come from the heap. Fixed here because setting the
#: trim threshold stops glibc's own adjustment of this one (from 128 KiB).
#: The gateway's largest message (``--max-message-size``) is 16 MiB.
MALLOC_MMAP_THRESHOLD: Final = 16 * 1024 * 1024
_M_TRIM_THRESHOLD: Final = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD: Final = -3


def tune_malloc() -> bool:
    """Keep freed message buffers for reuse (glibc only); True when glibc took the settings.

    The cost: a gateway holds up to MALLOC_TRIM_THRESHOLD of freed memory that
    another process could have used.
    """
    if platform.libc_ver()[0] != "glibc":
        return False  # musl's mallopt does nothing; other platforms have none
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    mapped = mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    return bool(trimmed and mapped)


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run a gateway until SIGINT/SIGTERM; a second signal forces the exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0
    gateway = Gateway(config)

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info(
                "= %s received: draining (ready 503, hop peers told GOAWAY); held requests "
                "get %gs to finish (signal again to stop now)",
                signal.Signals(signum).name,
                config.shutdown_grace,
            )
            gateway.drain()  # /.hopgate/ready says 503 from now on, peers told GOAWAY
            stop.set()
        else:
            log.warning("= second signal: exiting now")
            raise SystemExit(1)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    uv = type(loop).__module__.partition(".")[0] == "uvloop"
    log.info("= event loop: %s (--event-loop %s)", "uvloop" if uv else "asyncio", config.event_loop)
    try:
        await gateway.start()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await gateway.stop()
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("= stopped")


def event_loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop ``--event-loop`` asks for; ``auto`` takes uvloop (faster) when it is installed.

    Asking for uvloop where it is missing is an error rather than a silent
    fallback: whoever asked expects its speed.
    """
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "--event-loop uvloop: uvloop is not installed; "
                "pip install 'hopgate[fast]' (or use --event-loop auto or asyncio)"
            ) from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
