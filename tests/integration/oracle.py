"""Expected profiles recomputed from the raw events with pandas, independently of models/.

Only the contract and the documented rules are used: profile key (identifiers on one event,
or linked by an alias, are one customer: the customer_id of that group, else ``anon:`` +
anonymous_id; plain union-find here), default channels per source, a session ends after more than
30 minutes without an event, active days are distinct UTC dates, revenue is summed in
cents, identify/alias events describe the person and not channel behaviour.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

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


def frame(events: list[tuple[str, dict]]) -> pd.DataFrame:
    """One row per distinct event (source, event dict)."""
    rows = []
    seen = set()
    keys = stitched_keys(events)
    for source, e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        props = e.get("properties") or {}
        rows.append(
            {
                "key": keys[f"cid:{e['customer_id']}" if e.get("customer_id") else f"anon:{e['anonymous_id']}"],
                "source": source,
                "type": e["type"],
                "ts": _ms(e["ts"]),
                "channel": (e.get("channel") or DEFAULT_CHANNEL[source]).lower(),
                "cents": round(props["revenue"] * 100) if e["type"] in PURCHASES else 0,
                "discounted": e["type"] in PURCHASES and props.get("discount", 0) > 0,
                "age": (props.get("traits") or {}).get("age"),
            }
        )
    df = pd.DataFrame(rows)
    df["day"] = df["ts"] // 86_400_000
    return df


def _sessions(ts: pd.Series) -> int:
    values = ts.sort_values().to_numpy()
    if len(values) == 0:
        return 0
    return int(1 + (pd.Series(values).diff().dropna() > GAP_MS).sum())


def _activity(df: pd.DataFrame) -> dict[str, Any]:
    orders = int(df["type"].isin(PURCHASES).sum())
    cents = int(df["cents"].sum())
    return {
        "events": len(df),
        "event_types": {k: int(v) for k, v in sorted(df["type"].value_counts().items())},
        "first_seen": _iso(int(df["ts"].min())),
        "last_seen": _iso(int(df["ts"].max())),
        "active_days": int(df["day"].nunique()),
        "sessions": _sessions(df["ts"]),
        "orders": orders,
        "revenue": cents / 100,
        "discounted_order_share": None if not orders else round(int(df["discounted"].sum()) / orders, 4),
    }


def expected_profiles(events: list[tuple[str, dict]]) -> dict[str, dict[str, Any]]:
    df = frame(events)
    out: dict[str, dict[str, Any]] = {}
    for key, person in df.groupby("key"):
        behaviour = person[person["source"] != "identify"]
        ident = person[(person["type"] == "identify") & person["age"].notna()].sort_values("ts")
        expected: dict[str, Any] = {"events": len(person), "age": None if ident.empty else int(ident["age"].iloc[-1])}
        if not behaviour.empty:
            expected["summary"] = _activity(behaviour)
            expected["channels"] = {ch: _activity(part) for ch, part in behaviour.groupby("channel")}
            mail = behaviour[behaviour["source"] == "email"]
            if not mail.empty:
                sent = int((mail["type"] == "sent").sum())
                opens = int((mail["type"] == "open").sum())
                expected["email"] = {
                    "sent": sent,
                    "opens": opens,
                    "clicks": int((mail["type"] == "click").sum()),
                    "open_rate": None if not sent else round(min(1.0, opens / sent), 4),
                }
            offline = behaviour[behaviour["source"] == "offline"]
            if not offline.empty:
                expected["store_visits"] = int((offline["type"] == "store_visit").sum())
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
