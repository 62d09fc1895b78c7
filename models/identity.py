"""The identity graph: which identifiers belong to one customer, and what merging them means.

Identifiers are namespaced strings: ``cid:<customer_id>``, ``anon:<anonymous_id>``,
``email:<keyed hash>``, ``device:<id>``, ``social:<platform>:<handle>``. Identifiers that
appear on one event (or are linked by ``identify`` / ``alias``) belong to one *group*; each
group has a canonical id, the key its profile lives under: the customer id when the group
has one, else the oldest identifier's key.

:func:`link` folds one event's identifiers into the graph and says what happened: the
canonical id the event belongs to, the groups it merged (absorbed canonical id ->
surviving one) and the merges it refused. Guardrails: two known customer ids never share
a group (a shared device or a typo must not fuse two customers: the link is refused and
reported as a conflict); blocked placeholder values never link anything; a group never
grows past ``max_identifiers``.

This is the pure logic (issue 5 groundwork); the streaming plumbing is not built yet.

Examples
--------
>>> graph = new_graph()
>>> link(graph, ["anon:a1"], ts=1).canonical
'anon:a1'
>>> r = link(graph, ["cid:c-7", "anon:a1"], ts=2)   # login: the anonymous history joins c-7
>>> r.canonical, r.merges
('c-7', [('anon:a1', 'c-7')])
>>> r = link(graph, ["cid:c-8", "anon:a1"], ts=3)   # the same device, another customer
>>> r.canonical, r.conflicts
('c-8', [('anon:a1', 'c-7', 'c-8')])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Graph = dict[str, Any]

# Placeholder values that clients send instead of an identifier; they must never link two customers.
BLOCKED_VALUES = frozenset({"", "null", "none", "nil", "undefined", "anonymous", "unknown", "0", "-1", "n/a",
                            "na", "test", "guest", "[object object]"})
DEFAULT_MAX_IDENTIFIERS = 50


def identifier(kind: str, value: Any, blocked: frozenset[str] = BLOCKED_VALUES) -> str | None:
    """The namespaced identifier, or None for a missing or blocked value.

    >>> identifier("anon", " A1 "), identifier("cid", "undefined"), identifier("social:instagram", "@Shop")
    ('anon:A1', None, 'social:instagram:shop')
    """
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in blocked:
        return None
    if kind.startswith("social:"):
        text = text.lstrip("@").lower()  # handles are case-insensitive
        if not text:
            return None
    return f"{kind}:{text}"


def canonical_key(ident: str) -> str:
    """The profile key of a group led by ``ident`` (a customer id is used bare).

    >>> canonical_key("cid:c-1"), canonical_key("anon:x")
    ('c-1', 'anon:x')
    """
    return ident[4:] if ident.startswith("cid:") else ident


@dataclass(slots=True)
class LinkResult:
    canonical: str | None
    merges: list[tuple[str, str]] = field(default_factory=list)  # (absorbed canonical, surviving canonical)
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)  # (identifier, its canonical, refused)
    capped: list[str] = field(default_factory=list)  # identifiers left out: the group was full


def new_graph() -> Graph:
    """``ids``: identifier -> group; ``groups``: group -> members, customer id and first time seen."""
    return {"ids": {}, "groups": {}}


def _group_of(graph: Graph, ident: str) -> str | None:
    return graph["ids"].get(ident)


def _repair(graph: Graph, ident: str, ts: int) -> None:
    """Put ``ident`` back into the group it points at when that group's record lost it.

    A store-backed graph writes an identifier and its group as separate keys. A crash between the
    two writes (kill -9 with the second still in the producer's buffer) leaves an identifier
    pointing at a group record that is missing or does not list it; every later event naming it
    would fail. The record is re-created or completed instead.
    """
    group = graph["ids"].get(ident)
    if group is None:
        return
    own = ident.startswith("cid:") and canonical_key(ident) == group
    record = graph["groups"].get(group)
    if record is None:
        graph["groups"][group] = {"members": [ident], "customer_id": group if own else None, "first_ts": ts}
    elif ident not in record["members"]:
        record["members"] = sorted({*record["members"], ident})
        if own:
            record["customer_id"] = group


def _new_group(graph: Graph, ident: str, ts: int) -> str:
    group = canonical_key(ident)
    graph["groups"][group] = {"members": [ident], "customer_id": group if ident.startswith("cid:") else None,
                              "first_ts": ts}
    graph["ids"][ident] = group
    return group


def _survivor(graph: Graph, groups: Iterable[str]) -> str:
    """The group that keeps its canonical id: the one with a customer id, else the oldest."""
    return min(groups, key=lambda g: (graph["groups"][g]["customer_id"] is None, graph["groups"][g]["first_ts"], g))


def link(graph: Graph, identifiers: Iterable[str | None], ts: int,
         max_identifiers: int = DEFAULT_MAX_IDENTIFIERS) -> LinkResult:
    """Fold one event's identifiers into ``graph`` (in place) and say what it did."""
    idents = sorted({i for i in identifiers if i})
    if not idents:
        return LinkResult(None)
    for ident in idents:
        _repair(graph, ident, ts)
    result = LinkResult(None)
    # The event's own customer id decides where it goes when its identifiers disagree.
    own = next((i for i in idents if i.startswith("cid:")), None)
    known = [i for i in idents if _group_of(graph, i) is not None]
    groups = sorted({_group_of(graph, i) for i in known})
    customer_ids = {graph["groups"][g]["customer_id"] for g in groups} - {None}
    customer_ids |= {canonical_key(i) for i in idents if i.startswith("cid:")}
    if len(customer_ids) > 1:
        # Never fuse two known customers: the event's own (first) customer id keeps it; the
        # others stay where they are, each in a group of its own.
        target = canonical_key(own) if own else sorted(customer_ids)[0]
        for ident in idents:
            if ident.startswith("cid:") and _group_of(graph, ident) is None:
                _new_group(graph, ident, ts)
        for ident in idents:
            g = _group_of(graph, ident)
            if g is not None and graph["groups"][g]["customer_id"] not in (None, target):
                result.conflicts.append((ident, g, target))
        groups = sorted({_group_of(graph, i) for i in idents if _group_of(graph, i) is not None})
        mergeable = [g for g in groups if graph["groups"][g]["customer_id"] in (None, target)]
        fresh = [i for i in idents if _group_of(graph, i) is None]
        result.canonical = _merge_into(graph, target, mergeable, fresh, ts, max_identifiers, result)
        return result
    if own is not None and _group_of(graph, own) is None:
        groups = sorted({*groups, _new_group(graph, own, ts)})
    if not groups:
        groups = [_new_group(graph, idents[0], ts)]
    survivor = _survivor(graph, groups)
    fresh = [i for i in idents if _group_of(graph, i) is None]
    result.canonical = _merge_into(graph, survivor, groups, fresh, ts, max_identifiers, result)
    return result


def _merge_into(graph: Graph, survivor: str, groups: list[str], fresh: list[str], ts: int,
                max_identifiers: int, result: LinkResult) -> str:
    target = graph["groups"][survivor]
    target["first_ts"] = min(target["first_ts"], ts)
    for g in groups:
        if g == survivor:
            continue
        absorbed = graph["groups"][g]
        if len(target["members"]) + len(absorbed["members"]) > max_identifiers:
            result.capped.extend(absorbed["members"])
            continue
        for ident in absorbed["members"]:
            graph["ids"][ident] = survivor
        target["members"] = sorted(set(target["members"]) | set(absorbed["members"]))
        target["first_ts"] = min(target["first_ts"], absorbed["first_ts"])
        target["customer_id"] = target["customer_id"] or absorbed["customer_id"]
        del graph["groups"][g]
        result.merges.append((g, survivor))
    for ident in fresh:
        if len(target["members"]) >= max_identifiers:
            result.capped.append(ident)
            continue
        graph["ids"][ident] = survivor
        target["members"] = sorted({*target["members"], ident})
    return survivor


# --- identifiers of an event ----------------------------------------------------------------------


def event_identifiers(record: dict[str, Any], blocked: frozenset[str] = BLOCKED_VALUES) -> list[str]:
    """The namespaced identifiers an event carries, blocked placeholders left out.

    ``customer_id``, ``anonymous_id``, the email's keyed hash, ``device_id``, the phone's
    keyed hash (an identify trait), the author's ``handle`` on a social platform, and the
    ``previous_id`` of an ``alias`` (an earlier anonymous id).

    >>> event_identifiers({"source": "social", "type": "like", "channel": "instagram", "customer_id": None,
    ...     "anonymous_id": "null", "email_hash": "9f0e", "device_id": "d-1", "properties": {"handle": "@Ann"}})
    ['email:9f0e', 'device:d-1', 'social:instagram:ann']
    """
    props = record.get("properties") or {}
    traits = props.get("traits") or {}
    found = [
        identifier("cid", record.get("customer_id"), blocked),
        identifier("anon", record.get("anonymous_id"), blocked),
        identifier("email", record.get("email_hash"), blocked),
        identifier("device", record.get("device_id"), blocked),
        identifier("phone", traits.get("phone_hash"), blocked),
    ]
    if record.get("source") == "social" and props.get("handle"):
        found.append(identifier(f"social:{record['channel']}", props["handle"], blocked))
    if record.get("type") == "alias":
        found.append(identifier("anon", props.get("previous_id"), blocked))
    return [i for i in dict.fromkeys(found) if i]


def parse_identifier(text: str, blocked: frozenset[str] = BLOCKED_VALUES) -> str | None:
    """An identifier typed by a person (``forget``, ``export``, ``profile``): a bare customer id,
    or ``anon:``, ``email:`` (hashed already), ``device:``, ``phone:``, ``social:<platform>:`` forms.

    >>> parse_identifier("c-7"), parse_identifier("anon:a1"), parse_identifier("social:instagram:@Ann")
    ('cid:c-7', 'anon:a1', 'social:instagram:ann')
    """
    kind, sep, rest = text.partition(":")
    if sep and kind in ("anon", "email", "device", "phone", "cid"):
        return identifier(kind, rest, blocked)
    if sep and kind == "social":
        platform, sep2, handle = rest.partition(":")
        return identifier(f"social:{platform.strip().lower()}", handle, blocked) if sep2 else None
    return identifier("cid", text, blocked)


# --- the graph over a key-value store (a Faust table) ---------------------------------------------


class Overlay:
    """A mapping over a store's ``get`` that remembers what :func:`link` changed.

    Reads are copied (groups are edited in place by :func:`link`), writes stay here until the
    caller takes :meth:`changes` and applies them to the store: only what differs from what
    was read, so an event of a known customer writes nothing.
    """

    _GONE = object()

    def __init__(self, load: Any) -> None:
        self._load = load
        self._read: dict[str, Any] = {}
        self._now: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self._now:
            value = self._load(key)
            self._read[key] = value
            self._now[key] = self._GONE if value is None else _copy(value)
        value = self._now[key]
        return default if value is self._GONE else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, self._GONE)
        if value is self._GONE:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key, self._GONE) is not self._GONE

    def __setitem__(self, key: str, value: Any) -> None:
        self.get(key)
        self._now[key] = value

    def __delitem__(self, key: str) -> None:
        self.get(key)
        self._now[key] = self._GONE

    def changes(self) -> dict[str, Any]:
        """Key -> new value (None: deleted) for every key whose value changed."""
        out = {}
        for key, value in self._now.items():
            new = None if value is self._GONE else value
            if new != self._read.get(key):
                out[key] = new
        return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


ID_PREFIX, GROUP_PREFIX, SUPPRESSED_PREFIX = "i|", "g|", "s|"
ERASING_KEY = "e|deferred"  # erasure requests put off while Redis was unreachable (streams.resolver)


def store_graph(get: Any) -> tuple[Graph, Overlay, Overlay]:
    """A graph whose ``ids`` and ``groups`` read through ``get`` (store keys ``i|…`` and ``g|…``).

    Returns the graph and its two overlays; :func:`store_changes` turns what :func:`link` did
    into the store writes.
    """
    ids = Overlay(lambda k: get(ID_PREFIX + k))
    groups = Overlay(lambda k: get(GROUP_PREFIX + k))
    return {"ids": ids, "groups": groups}, ids, groups


def store_changes(ids: Overlay, groups: Overlay) -> dict[str, Any]:
    """The store writes (None: delete) of a graph from :func:`store_graph`."""
    out = {ID_PREFIX + k: v for k, v in ids.changes().items()}
    out.update({GROUP_PREFIX + k: v for k, v in groups.changes().items()})
    return out


def known_canonical(get: Any, identifiers: Iterable[str | None], ts: int) -> str | None:
    """The group of an event whose identifiers :func:`link` would leave as they are, else None.

    Most events come from known people: every identifier already points at one group whose
    record lists it, the group already holds a customer id agreeing with the event's own, and
    the event is not older than the group. :func:`link` would change nothing then; this answers
    from the store (``get`` of ``i|…`` and ``g|…`` keys, as :func:`store_graph`) without building
    the copy-on-read graph. None means: run :func:`link`.

    >>> store = {"i|cid:c-1": "c-1", "i|anon:a1": "c-1",
    ...          "g|c-1": {"members": ["anon:a1", "cid:c-1"], "customer_id": "c-1", "first_ts": 5}}
    >>> known_canonical(store.get, ["cid:c-1", "anon:a1"], 9), known_canonical(store.get, ["anon:a1"], 4)
    ('c-1', None)
    """
    group = None
    idents = [i for i in identifiers if i]
    if not idents:
        return None
    for ident in idents:
        g = get(ID_PREFIX + ident)
        if g is None or (group is not None and g != group):
            return None
        group = g
    record = get(GROUP_PREFIX + group)
    if record is None or ts < record["first_ts"]:
        return None
    members = record["members"]
    customer_id = record["customer_id"]
    for ident in idents:
        if ident not in members:
            return None
        if ident.startswith("cid:") and canonical_key(ident) != customer_id:
            return None
    return group


def erase(graph: Graph, ident: str) -> tuple[str | None, list[str]]:
    """Remove the group of ``ident`` from the graph: its canonical id and all its identifiers
    (``ident`` alone when the graph does not know it).

    >>> g = new_graph(); _ = link(g, ["cid:c-1", "anon:a1"], ts=1)
    >>> erase(g, "anon:a1"), g
    (('c-1', ['anon:a1', 'cid:c-1']), {'ids': {}, 'groups': {}})
    """
    group = graph["ids"].get(ident)
    if group is None:
        return None, [ident]
    members = list(graph["groups"][group]["members"]) if group in graph["groups"] else [ident]
    for member in members:
        if graph["ids"].get(member) is not None:
            del graph["ids"][member]
    if group in graph["groups"]:
        del graph["groups"][group]
    return group, sorted(members)


def put_off_erasures(get: Any) -> tuple[frozenset[str], set[str]]:
    """The identifiers of the people whose erasure is put off (the requests under
    :data:`ERASING_KEY`, read through ``get`` as :func:`store_graph`), and the store keys
    (``i|…``, ``g|…``) that carrying them out deletes. The graph holds those people until then
    and their events are dropped meanwhile, so what it holds is what the erasure will find.

    >>> store = {"i|cid:c-1": "c-1", "i|anon:a1": "c-1",
    ...          "g|c-1": {"members": ["anon:a1", "cid:c-1"], "customer_id": "c-1", "first_ts": 5},
    ...          ERASING_KEY: {"r-1": {"identifier": "anon:a1"}, "r-2": {"identifier": "anon:zz"}}}
    >>> identifiers, keys = put_off_erasures(store.get)
    >>> sorted(identifiers), sorted(keys)
    (['anon:a1', 'anon:zz', 'cid:c-1'], ['g|c-1', 'i|anon:a1', 'i|cid:c-1'])
    """
    deferred = get(ERASING_KEY) or {}
    graph, ids, groups = store_graph(get)
    identifiers: set[str] = set()
    for request in deferred.values():
        identifiers.update(erase(graph, request["identifier"])[1])
    return frozenset(identifiers), set(store_changes(ids, groups))
