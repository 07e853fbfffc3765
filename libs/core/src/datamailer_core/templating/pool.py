"""Renders in worker processes, so a runaway render costs a worker, never the caller's
event loop or memory. The sandbox's own bounds (`templating.sandbox`) keep renders
small and short; this is the backstop for whatever they miss:
- each call runs in a worker process (forkserver, templating preloaded, niced) whose
  address space is capped (RLIMIT_AS, `memory_limit` bytes above what the worker used at start;
  Linux only): an allocation past it is a `MemoryError`, so `render_failed`;
- a call that has not answered after `timeout` seconds of running (`HARD_TIMEOUT_SECONDS`,
  well above the renderer's own `RENDER_TIMEOUT_SECONDS`) raises
  `TemplateError("render_limit_exceeded")`: the pool's workers are killed and the pool is
  replaced. Calls that were running in the killed pool are retried once on the new one;
- a worker that dies on its own (killed by the OS, a crash) is replaced the same way;
  a call that dies twice raises `TemplateError("render_failed")`;
- at most `workers` calls run at once, the others wait their turn (the timeout counts
  running time only, not the wait, nor the workers' start on first use: an app that
  never renders never forks).
The callable and its arguments are pickled: pass module-level functions and plain data.
"""

import asyncio
import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Final, ParamSpec, TypeVar

from datamailer_core.templating import RENDER_TIMEOUT_SECONDS, TemplateError

# The sandbox stops a render at RENDER_TIMEOUT_SECONDS by itself; this backstop only
# catches what it cannot interrupt (one long C call), so it is generous: a niced worker
# on a busy machine must not turn an ordinary render into a client error.
HARD_TIMEOUT_SECONDS: Final = RENDER_TIMEOUT_SECONDS + 9.0
MEMORY_LIMIT_BYTES: Final = 512 * 1024 * 1024
DEFAULT_WORKERS: Final = 2
NICENESS: Final = 10
STARTUP_TIMEOUT_SECONDS: Final = 60.0

P = ParamSpec("P")
T = TypeVar("T")


def _init_worker(headroom: int) -> None:
    """Worker initializer: a lower CPU priority (a busy render must not slow the event
    loop that waits for it) and the address space capped at what is mapped now plus
    `headroom`."""
    os.nice(NICENESS)
    try:
        import resource

        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError):
        return  # not Linux: the timeout still holds
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(mapped + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _ready() -> None:
    pass


class RenderPool:
    """`await pool.run(render_message, subject, html, text, context)`; see the module
    docstring. Use as `async with RenderPool() as pool:` (or call `close`)."""

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        *,
        timeout: float = HARD_TIMEOUT_SECONDS,
        memory_limit: int = MEMORY_LIMIT_BYTES,
        preload: Sequence[str] = (),
    ) -> None:
        self.workers, self.timeout, self.memory_limit = workers, timeout, memory_limit
        self._context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has imported the renderer (and `preload`, the
        # modules of the functions to run) once. Only the first pool of a process sets
        # this: its forkserver is started once.
        self._context.set_forkserver_preload([__name__, *preload])
        self._slots = asyncio.Semaphore(workers)
        self._generation = 0
        self._executor = self._new_executor()
        self._starting: asyncio.Future[list[None]] | None = None

    async def start(self) -> None:
        """Start the workers (`run` does on first use; the first pool of a process also
        starts the forkserver, about a second). No call's timeout counts this."""
        if self._starting is None:
            ready = [asyncio.wrap_future(self._executor.submit(_ready)) for _ in range(self.workers)]
            self._starting = asyncio.ensure_future(
                asyncio.wait_for(asyncio.gather(*ready), STARTUP_TIMEOUT_SECONDS)
            )
        await asyncio.shield(self._starting)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers, mp_context=self._context, initializer=_init_worker, initargs=(self.memory_limit,)
        )

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(fn, *args, **kwargs)
        async with self._slots:
            for attempt in (1, 2):
                generation = self._generation
                try:
                    await self.start()
                except TimeoutError:
                    self._replace(generation)
                    raise TemplateError("render_failed", detail="the render workers did not start") from None
                except BrokenProcessPool:
                    self._replace(generation)
                    continue
                try:
                    future = asyncio.wrap_future(self._executor.submit(call))
                    return await asyncio.wait_for(future, self.timeout)
                except TimeoutError:
                    self._replace(generation)
                    raise TemplateError(
                        "render_limit_exceeded", detail=f"no answer after {self.timeout}s"
                    ) from None
                except BrokenProcessPool:
                    self._replace(generation)
                    if attempt == 2:
                        raise TemplateError("render_failed", detail="the render process died") from None
        raise TemplateError("render_failed", detail="the render workers did not start")

    def _replace(self, generation: int) -> None:
        """Kill the workers of `generation`'s pool and start a new pool, once."""
        if generation != self._generation:
            return  # another call already did
        old, self._executor = self._executor, self._new_executor()
        self._generation += 1
        self._starting = None
        # ProcessPoolExecutor (3.11) has no public way to stop a busy worker. Killed, the
        # executor fails the calls still in it with BrokenProcessPool, and they retry.
        for process in list((old._processes or {}).values()):
            process.kill()
        old.shutdown(wait=False)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def __aenter__(self) -> "RenderPool":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
