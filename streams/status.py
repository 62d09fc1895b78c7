"""``omniprofile status``: the health and metrics of running workers at a glance.

It reads each worker's ``/health`` and ``/metrics`` (streams.metrics) and prints them as
tables: state, partitions, lag, events and dead letters, Redis. Exit code 0 when every worker
answered and none is stalled, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections import defaultdict

import orjson
from prometheus_client.parser import text_string_to_metric_families

from streams.console import format_table


def fetch(url: str, timeout: float) -> tuple[dict, dict[str, list[tuple[dict, float]]]]:
    """(health document, metric name -> [(labels, value)]) of the worker at ``url``."""
    base = url.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout) as response:
            health = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 when stalled: the body is still the document
        health = orjson.loads(exc.read())
    with urllib.request.urlopen(base + "/metrics", timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return health, samples


def _by(samples: dict, name: str, label: str) -> list[tuple[str, float]]:
    return sorted((labels[label], value) for labels, value in samples.get(name, []))


def _one(samples: dict, name: str) -> float:
    values = samples.get(name) or [({}, 0.0)]
    return values[0][1]


def format_status(url: str, health: dict, samples: dict) -> str:
    """One worker's status as readable tables (pure: unit-tested)."""
    parts = [format_table(
        ["worker", "status", "detail", "partitions", "rebalances", "input lag", "idle s", "uptime s"],
        [[url, health["status"], health["detail"], health["assigned_partitions"], health["rebalances"],
          health["input_lag"], health["seconds_since_input"], health["uptime_seconds"]]],
    )]
    rows = [[source, int(n)] for source, n in _by(samples, "omniprofile_events_valid_total", "source")]
    rows += [[f"dead-lettered: {kind}", int(n)] for kind, n in _by(samples, "omniprofile_dead_letters_total", "reason")]
    if rows:
        parts.append(format_table(["events", "count"], rows, title="== events read (valid by source) =="))
    lag = [[labels["topic"], labels["partition"], int(v)]
           for labels, v in sorted(samples.get("omniprofile_consumer_lag", []),
                                   key=lambda lv: (lv[0]["topic"], int(lv[0]["partition"]))) if v]
    parts.append(format_table(["topic", "partition", "lag"], lag, title="== consumer lag (partitions behind) ==")
                 if lag else "consumer lag: none")
    redis_rows = []
    pending = dict(_by(samples, "omniprofile_redis_pending", "sink"))
    for sink, errors in _by(samples, "omniprofile_redis_errors_total", "sink"):
        redis_rows.append([sink, int(errors), int(pending.get(sink, 0))])
    catch_ups = dict(_by(samples, "omniprofile_redis_catchups_total", "how"))
    parts.append(format_table(["sink", "failed flushes", "pending"], redis_rows,
                              title=f"== Redis (resync backlog {int(_one(samples, 'omniprofile_redis_resync_backlog'))}, "
                                    f"rewrites {int(_one(samples, 'omniprofile_redis_resyncs_total'))}, "
                                    f"partitions taken over: {int(catch_ups.get('scanned', 0))} scanned, "
                                    f"{int(catch_ups.get('clean_handover', 0))} handed over cleanly, "
                                    f"{int(_one(samples, 'omniprofile_redis_restaged_total'))} profiles re-written; "
                                    f"identity graph taken over: {int(catch_ups.get('identity_rewritten', 0))} "
                                    f"rewritten, {int(catch_ups.get('identity_clean_handover', 0))} handed over "
                                    f"cleanly) =="))
    return "\n\n".join(parts)


def cmd_status(args: argparse.Namespace) -> int:
    healthy = True
    for url in args.url:
        try:
            health, samples = fetch(url, args.timeout)
        except (OSError, ValueError) as exc:
            print(f"{url}: no answer ({exc}); is a worker running there with OMNIPROFILE_WEB_PORT set?",
                  file=sys.stderr)
            healthy = False
            continue
        if args.json:
            print(orjson.dumps({"url": url, "health": health,
                                "metrics": {k: [[labels, v] for labels, v in vs] for k, vs in samples.items()}},
                               option=orjson.OPT_INDENT_2).decode())
        else:
            print(format_status(url, health, samples))
            print()
        healthy = healthy and health["status"] != "stalled"
    return 0 if healthy else 1


def add_status_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="health, lag, events and Redis of running workers (their /health and /metrics)")
    p.add_argument("--url", action="append", default=None,
                   help="a worker's base URL (repeatable; default http://127.0.0.1:6066)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: cmd_status(_defaults(a)))


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    args.url = args.url or ["http://127.0.0.1:6066"]
    return args
