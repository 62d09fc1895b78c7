"""Timers that write out (to Kafka or Redis), and a clean stop.

Faust stops a worker in this order: the consumer, the ``on_before_shutdown`` hooks (where the
worker sends what it still holds: journey deltas, learner samples), the producer, and only then the
timer tasks. A timer body that was already running when the stop began (a journey flush, a sweep)
went on sending after the producer had stopped: ``NotReady('Producer service not yet started')``
crashed the worker at its stop (exit code 1 after SIGTERM) and the journey deltas that body had
taken from the buffer were lost. Found by a restart test with debug logging, which slows the stop.

:class:`SendGate` closes that window: a sending timer body runs inside :meth:`SendGate.sending`
(and is skipped once the gate is closed); the shutdown hook calls :meth:`SendGate.close`, which
waits for the bodies in progress to finish while the producer still runs. A long body can look at
:attr:`SendGate.closing` to stop early. The Redis flush and resync timers use the gate too: the
same hook flushes and closes the Redis sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class SendGate:
    """Lets timer bodies send until the stop, and the stop wait for the bodies in progress.

    >>> import asyncio
    >>> async def demo():
    ...     gate, sent = SendGate(), []
    ...     async def body(n):
    ...         async with gate.sending() as allowed:
    ...             if allowed:
    ...                 await asyncio.sleep(0.01)
    ...                 sent.append(n)
    ...     running = asyncio.ensure_future(body(1))
    ...     await asyncio.sleep(0)       # the body is in progress ...
    ...     await gate.close()           # ... and the stop waits for it
    ...     await body(2)                # after the stop: skipped
    ...     await running
    ...     return sent
    >>> asyncio.run(demo())
    [1]
    """

    def __init__(self) -> None:
        self.closing = False
        self._active = 0
        self._idle: asyncio.Event | None = None

    @contextlib.asynccontextmanager
    async def sending(self) -> AsyncIterator[bool]:
        """Yields whether the body may send (False once the stop has begun)."""
        if self.closing:
            yield False
            return
        self._active += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            yield True
        finally:
            self._active -= 1
            if self._active == 0 and self._idle is not None:
                self._idle.set()

    async def close(self, timeout: float = 10.0) -> bool:
        """Refuse new bodies and wait (up to ``timeout`` s) for those in progress; False if some
        were still running then."""
        self.closing = True
        if self._active == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
