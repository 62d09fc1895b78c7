"""Every topic name of the contract, declared once.

Names only (no Faust import): :mod:`streams.app` turns them into Faust topics, and the
command line, the demo, docker-compose checks and tests read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from aiokafka.partitioner import murmur2

# The input sources, in the contract's order; the topic is ``events.<source>``.
SOURCES: tuple[str, ...] = ("clickstream", "email", "app", "social", "offline", "identify")


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Topic names under one prefix (``OMNIPROFILE_TOPIC_PREFIX``)."""

    prefix: str = ""

    def source(self, source: str) -> str:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
        return f"{self.prefix}events.{source}"

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.source(s) for s in SOURCES)

    @property
    def updates(self) -> str:
        return f"{self.prefix}profiles.updates"

    @property
    def segments(self) -> str:
        return f"{self.prefix}profiles.segments"

    @property
    def hops(self) -> str:
        return f"{self.prefix}profiles.hops"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}profiles.deadletter"

    @property
    def segment_summaries(self) -> str:
        return f"{self.prefix}profiles.segment-summaries"

    @property
    def identity(self) -> str:
        """Stitching lineage (``IdentityChange``: merges, conflicts, capped groups), keyed by old id."""
        return f"{self.prefix}profiles.identity"

    @property
    def audit(self) -> str:
        """Privacy audit (``ErasureAudit``), keyed by request id."""
        return f"{self.prefix}profiles.audit"

    @property
    def erasure_requests(self) -> str:
        """Input: erasure requests (``{"identifier": ..., "request_id": ...}``), from any producer."""
        return f"{self.prefix}privacy.erasure-requests"

    @property
    def identity_events(self) -> str:
        """Internal, one partition: validated events on their way through the identity graph."""
        return f"{self.prefix}omniprofile.identity-events"

    @property
    def by_customer(self) -> str:
        """Internal: validated events re-keyed by customer, co-partitioned with the profile table."""
        return f"{self.prefix}omniprofile.events-by-customer"

    @property
    def segment_features(self) -> str:
        """Internal, one partition: sampled feature vectors for the segment learner."""
        return f"{self.prefix}omniprofile.segment-features"

    @property
    def segment_tallies(self) -> str:
        """Internal, one partition: per-partition segment tallies for the persona summaries."""
        return f"{self.prefix}omniprofile.segment-tallies"

    @property
    def journey_deltas(self) -> str:
        """Internal: journey counter deltas keyed by counter, for the windowed journey tables."""
        return f"{self.prefix}omniprofile.journey-deltas"

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.updates, self.segments, self.segment_summaries, self.hops, self.identity, self.audit,
                self.deadletter)

    @property
    def public(self) -> tuple[str, ...]:
        """The topics of the public contract (inputs, erasure requests and outputs)."""
        return self.inputs + (self.erasure_requests,) + self.outputs

    def source_of(self, topic: str) -> str | None:
        """The source name of an input topic, or None for any other topic.

        >>> TopicNames("shop1.").source_of("shop1.events.email")
        'email'
        >>> TopicNames().source_of("profiles.updates") is None
        True
        """
        head = f"{self.prefix}events."
        if topic.startswith(head) and topic[len(head):] in SOURCES:
            return topic[len(head):]
        return None


@lru_cache(maxsize=65_536)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a key: Kafka's default (murmur2), set explicitly on every send of a
    keyed internal topic, so any process can tell which partition holds a customer.

    >>> partition_of(b"c-1", 4) == partition_of(b"c-1", 4) < 4
    True

    Cached: murmur2 runs in Python, and the same customers come back batch after batch.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions
