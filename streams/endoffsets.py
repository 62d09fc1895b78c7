"""End offsets as a fetch reports them, for the table recovery and the lag figures.

Faust takes a partition's end offset from the broker's ListOffsets answer, and its table recovery
reads a changelog partition up to that offset and then stops (it pauses the partition and applies
nothing more it fetched). Tansu 0.6.0 answers ListOffsets with the base offset of a partition's
last record batch plus one, short of the batch's other records (measured: a batch of offsets 8-12
is reported as end 9), while its fetch answers carry the right high watermark. A worker restarted
after a clean stop then recovered its profile table without the tail of each changelog
partition's last multi-record batch, and, its input offsets committed, processed nothing again:
those profiles went back to an older state, and their next event wrote that older state on (a
customer's events "lost" in the fault suite's poison scenario, about one run in twenty).

:class:`FetchedEnds` asks a fetch too: for each partition whose listed end is above 0 it fetches
from the listed end minus one with a consumer of its own (no group), and takes the larger of the
listed end and the high watermark the fetch reports. On Apache Kafka the two are the same (one
small fetch more per call); a fetch that fails or does not come back in time leaves the listed
ends, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def raise_to_fetched(listed: Mapping[Any, int | None], fetched: Mapping[Any, int | None]) -> dict[Any, int | None]:
    """Each listed end offset raised to the fetched high watermark where that is higher.

    >>> raise_to_fetched({"a": 9, "b": 4, "c": None, "d": 0}, {"a": 13, "b": 4, "c": 2})
    {'a': 13, 'b': 4, 'c': None, 'd': 0}
    """
    out = dict(listed)
    for tp, end in listed.items():
        high = fetched.get(tp)
        if end is not None and high is not None and high > end:
            out[tp] = high
    return out


def worth_fetching(listed: Mapping[Any, int | None]) -> list[Any]:
    """The partitions a fetch can tell more about: those with records (a listed end above 0).

    >>> worth_fetching({"a": 9, "b": 0, "c": None})
    ['a']
    """
    return [tp for tp, end in listed.items() if end]


class FetchedEnds:
    """Wraps a faust consumer's ``highwaters`` (ListOffsets) with a fetch's high watermarks.

    ``new_probe`` builds, not started, the aiokafka consumer used for the fetches (it is started
    at the first call, in the event loop of that call, and reused); ``timeout`` bounds one call's
    fetch (seconds).
    """

    def __init__(self, listed: Callable[..., Awaitable[Mapping[Any, int]]], new_probe: Callable[[], Any],
                 timeout: float = 5.0) -> None:
        self.listed = listed
        self.new_probe = new_probe
        self.timeout = timeout
        self.raised = 0  # partitions whose listed end a fetch raised (omniprofile_end_offsets_raised_total)
        self._probe: Any = None
        self._lock = asyncio.Lock()

    async def highwaters(self, *tps: Any) -> Mapping[Any, int]:
        listed = await self.listed(*tps)
        wanted = worth_fetching(listed)
        if not wanted:
            return listed
        try:
            async with self._lock:  # one probe, one assignment at a time
                fetched = await asyncio.wait_for(self._fetch(wanted, listed), self.timeout)
        except Exception as exc:  # noqa: BLE001 - the listed ends are still an answer
            log.warning("Could not check the broker's end offsets by a fetch (%r); using the listed ones", exc)
            return listed
        out = raise_to_fetched(listed, fetched)
        raised = {tp: (listed[tp], out[tp]) for tp in wanted if out[tp] != listed[tp]}
        if raised:
            self.raised += len(raised)
            log.debug("End offsets raised by a fetch (listed, fetched): %s", raised)
        return out

    async def _fetch(self, tps: list[Any], listed: Mapping[Any, int]) -> dict[Any, int | None]:
        from aiokafka import TopicPartition

        if self._probe is None:
            probe = self.new_probe()
            try:
                await probe.start()
            except BaseException:
                await probe.stop()
                raise
            self._probe = probe
        probe = self._probe
        parts = {tp: TopicPartition(tp.topic, tp.partition) for tp in tps}
        probe.assign(list(parts.values()))
        for tp, part in parts.items():
            probe.seek(part, listed[tp] - 1)
        highs: dict[Any, int | None] = {}
        try:
            while len(highs) < len(parts):
                await probe.getmany(*[parts[tp] for tp in tps if tp not in highs], timeout_ms=200)
                for tp, part in parts.items():
                    high = probe.highwater(part)
                    if high is not None:
                        highs[tp] = high
        finally:
            # Left assigned and unpaused, the probe's fetcher went on polling these partitions in the
            # background (about 45 fetch requests a second at the embedded 20 ms fetch wait).
            probe.pause(*parts.values())
        return highs

    async def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.stop()
