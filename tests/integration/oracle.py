"""Expected profiles recomputed from the raw events in plain Python, independently of models/.

Only the contract and the documented rules are used: profile key (identifiers on one event,
or linked by an alias, are one customer: the customer_id of that group, else ``anon:`` +
anonymous_id; plain union-find here), default channels per source, a session ends after more than
30 minutes without an event, active days are distinct UTC dates, revenue is summed in
cents, identify/alias events describe the person and not channel behaviour.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

DEFAULT_CHANNEL = {"email": "email", "app": "app", "offline": "store", "identify": "web"}
PURCHASES = {"purchase", "pos_purchase"}
GAP_MS = 30 * 60 * 1000


def _ms(ts: Any) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def stitched_keys(events: list[tuple[str, dict]]) -> dict[str, str]:
    """Identifier -> profile key of its connected group (union-find over the events' identifiers)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, e in events:
        ids = [f"cid:{e['customer_id']}" if e.get("customer_id") else None,
               f"anon:{e['anonymous_id']}" if e.get("anonymous_id") else None,
               f"email:{e['email'].strip().lower()}" if e.get("email") else None]
        if e["type"] == "alias":
            ids.append(f"anon:{e['properties']['previous_id']}")
        ids = [i for i in ids if i]
        find(ids[0])
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    keys = {}
    for members in groups.values():
        cids = sorted(m[4:] for m in members if m.startswith("cid:"))
        assert len(cids) <= 1, f"the test data links two customers: {cids}"
        key = cids[0] if cids else min(m for m in members if m.startswith("anon:"))
        keys.update({m: key for m in members})
    return keys


def frame(events: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """One row per distinct event (source, event dict)."""
    rows = []
    seen = set()
    keys = stitched_keys(events)
    for source, e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        props = e.get("properties") or {}
        ts = _ms(e["ts"])
        rows.append(
            {
                "key": keys[f"cid:{e['customer_id']}" if e.get("customer_id") else f"anon:{e['anonymous_id']}"],
                "source": source,
                "type": e["type"],
                "ts": ts,
                "day": ts // 86_400_000,
                "channel": (e.get("channel") or DEFAULT_CHANNEL[source]).lower(),
                "cents": round(props["revenue"] * 100) if e["type"] in PURCHASES else 0,
                "discounted": e["type"] in PURCHASES and props.get("discount", 0) > 0,
                "age": (props.get("traits") or {}).get("age"),
            }
        )
    return rows


def _sessions(times: list[int]) -> int:
    ordered = sorted(times)
    return sum(1 for i, t in enumerate(ordered) if i == 0 or t - ordered[i - 1] > GAP_MS)


def _activity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["ts"] for r in rows]
    orders = sum(r["type"] in PURCHASES for r in rows)
    cents = sum(r["cents"] for r in rows)
    return {
        "events": len(rows),
        "event_types": dict(sorted(Counter(r["type"] for r in rows).items())),
        "first_seen": _iso(min(times)),
        "last_seen": _iso(max(times)),
        "active_days": len({r["day"] for r in rows}),
        "sessions": _sessions(times),
        "orders": orders,
        "revenue": cents / 100,
        "discounted_order_share": None if not orders else round(sum(r["discounted"] for r in rows) / orders, 4),
    }


def _group(rows: list[dict[str, Any]], field: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r[field]].append(r)
    return out


def expected_profiles(events: list[tuple[str, dict]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, person in sorted(_group(frame(events), "key").items()):
        behaviour = [r for r in person if r["source"] != "identify"]
        # The latest identify with an age describes the person (stable on equal times: the order sent).
        ident = sorted((r for r in person if r["type"] == "identify" and r["age"] is not None), key=lambda r: r["ts"])
        expected: dict[str, Any] = {"events": len(person), "age": None if not ident else int(ident[-1]["age"])}
        if behaviour:
            expected["summary"] = _activity(behaviour)
            expected["channels"] = {ch: _activity(part) for ch, part in sorted(_group(behaviour, "channel").items())}
            mail = [r for r in behaviour if r["source"] == "email"]
            if mail:
                kinds = Counter(r["type"] for r in mail)
                sent, opens = kinds["sent"], kinds["open"]
                expected["email"] = {
                    "sent": sent,
                    "opens": opens,
                    "clicks": kinds["click"],
                    "open_rate": None if not sent else round(min(1.0, opens / sent), 4),
                }
            offline = [r for r in behaviour if r["source"] == "offline"]
            if offline:
                expected["store_visits"] = sum(r["type"] == "store_visit" for r in offline)
        out[str(key)] = expected
    return out


def compare(expected: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    """Differences between an expected profile and a published one, as readable lines."""
    problems = []

    def check(label: str, want: Any, got: Any) -> None:
        if want != got:
            problems.append(f"{label}: expected {want!r}, got {got!r}")

    check("events", expected["events"], profile["events"])
    check("demographics.age", expected["age"], profile["demographics"].get("age"))
    if "summary" not in expected:
        check("summary.events", 0, profile["summary"]["events"])
        return problems
    for name, want in expected["summary"].items():
        check(f"summary.{name}", want, profile["summary"][name])
    check("channels", sorted(expected["channels"]), sorted(profile["channels"]))
    for ch, want_block in expected["channels"].items():
        got_block = profile["channels"].get(ch, {})
        for name, want in want_block.items():
            check(f"channels.{ch}.{name}", want, got_block.get(name))
    if "email" in expected:
        for name, want in expected["email"].items():
            check(f"email.{name}", want, profile["summary"].get("email", {}).get(name))
    if "store_visits" in expected:
        check("offline.store_visits", expected["store_visits"], profile["summary"].get("offline", {}).get("store_visits"))
    return problems
