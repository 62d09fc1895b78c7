"""The ``generate`` and ``demo`` commands."""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from streams.console import Progress, format_table
from streams.settings import ConfigError, Settings, load_settings
from streams.topics import TopicNames


def default_start(days: int) -> datetime:
    """Midnight UTC ``days`` ago, so generated events end around now (never in the future)."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days)


def parse_start(text: str | None, days: int) -> datetime:
    if not text:
        return default_start(days)
    try:
        start = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--start {text!r} is not an ISO-8601 date such as 2026-11-01") from None
    return start if start.tzinfo else start.replace(tzinfo=timezone.utc)


def message_key(event: dict[str, Any]) -> bytes | None:
    ident = event.get("customer_id") or event.get("anonymous_id") or event.get("email")
    return str(ident).encode() if ident else None


def batched_messages(events: Iterable[Any], batch: int) -> Iterator[tuple[str, bytes | None, bytes, int]]:
    """(source, key, value, event count) per message: single events, or arrays of up to ``batch``
    consecutive events of one source."""
    if batch <= 1:
        for ge in events:
            yield ge.source, message_key(ge.event), orjson.dumps(ge.event), 1
        return
    pending: dict[str, list[dict]] = collections.defaultdict(list)
    for ge in events:
        bucket = pending[ge.source]
        bucket.append(ge.event)
        if len(bucket) >= batch:
            yield ge.source, None, orjson.dumps(bucket), len(bucket)
            pending[ge.source] = []
    for source, bucket in pending.items():
        if bucket:
            yield source, None, orjson.dumps(bucket), len(bucket)


def publish_dataset(settings: Settings, dataset: Any, batch: int = 1, label: str = "publishing") -> int:
    """Publish valid events (single or in arrays) and invalid messages; return messages sent."""
    from streams.admin import producer

    names = TopicNames(settings.topic_prefix)
    total = len(dataset.events) + len(dataset.invalid)
    progress = Progress(label, total)
    prod = producer(settings, max_request_size=8 * 1024 * 1024)
    done = sent = 0
    for source, key, value, count in batched_messages(dataset.events, batch):
        prod.send(names.source(source), key=key, value=value)
        done += count
        sent += 1
        if sent % 2000 == 0:
            progress.update(done)
    for bad in dataset.invalid:
        prod.send(names.source(bad.source), value=bad.payload)
        done += 1
        sent += 1
    prod.flush()
    prod.close()
    progress.finish(done)
    return sent


def cmd_generate(args: argparse.Namespace) -> int:
    """Seeded synthetic events with ground truth, to JSONL files or to the topics."""
    from models.synthetic import generate

    if not args.out and not args.publish:
        raise ConfigError("say where the events go: --out FILE (JSONL) and/or --publish (to the topics)")
    started = time.monotonic()
    dataset = generate(
        args.customers,
        seed=args.seed,
        start=parse_start(args.start, args.days),
        days=args.days,
        invalid_rate=args.invalid_rate,
    )
    print(
        f"generated {len(dataset.events):,} events and {len(dataset.invalid):,} invalid messages "
        f"for {len(dataset.customers):,} customers in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if args.out:
        write_jsonl(Path(args.out), dataset)
        truth = Path(args.truth) if args.truth else Path(args.out).with_suffix(".truth.jsonl")
        with truth.open("wb") as fh:
            for customer in dataset.customers:
                fh.write(orjson.dumps(asdict(customer)) + b"\n")
        print(f"events: {args.out}\ntruth:  {truth}", file=sys.stderr)
    if args.publish:
        from streams.admin import ensure_topics

        settings = load_settings()
        ensure_topics(settings, TopicNames(settings.topic_prefix).public)
        sent = publish_dataset(settings, dataset, args.batch)
        print(f"published {sent:,} messages to {settings.kafka_bootstrap_servers}", file=sys.stderr)
    return 0


def write_jsonl(path: Path, dataset: Any) -> None:
    """One message per line: ``{"source", "event"}`` for valid events,
    ``{"source", "invalid_kind", "payload_base64"}`` for the invalid ones."""
    import base64

    with path.open("wb") as fh:
        for ge in dataset.events:
            fh.write(orjson.dumps({"source": ge.source, "event": ge.event}) + b"\n")
        for bad in dataset.invalid:
            line = {"source": bad.source, "invalid_kind": bad.kind, "payload_base64": base64.b64encode(bad.payload).decode()}
            fh.write(orjson.dumps(line) + b"\n")


# --- demo ------------------------------------------------------------------------------------


class Worker:
    """An ``omniprofile worker`` child process with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--quiet"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with code {self.proc.returncode}:\n{self.tail()}")
            if b"Worker ready" in self.log_path.read_bytes():
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"the worker was not ready within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPROFILE_")}
    env.update(settings_env)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Interrupts(list):
    """The signals received (a list); ``stopping`` is set by the caller once it has caught the
    KeyboardInterrupt and is cleaning up."""

    stopping = False


NUDGE_SECONDS = 2.0


def interrupt_on_signals(nudge: bool = False) -> Interrupts:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt, so the caller's ``finally`` stops the
    broker, Redis and workers it started (they run in sessions of their own and would outlive it).

    Returns the list the signals received are appended to: library code may turn the
    KeyboardInterrupt into another error, and the list says what really happened. kafka-python 3 can
    also swallow it: its network tasks run under ``except BaseException``, and a KeyboardInterrupt
    raised inside one is kept as that task's error while the caller goes on waiting (the demo hung in
    a producer's bootstrap so). With ``nudge``, while the main thread is still inside kafka-python and
    the caller has not set ``stopping``, the interrupt is raised again every ``NUDGE_SECONDS``.
    """
    interrupted = Interrupts()

    def in_kafka_python() -> bool:
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None:
            if f"{os.sep}kafka{os.sep}" in frame.f_code.co_filename:
                return True
            frame = frame.f_back
        return False

    def keep_nudging() -> None:
        while not interrupted.stopping:
            time.sleep(NUDGE_SECONDS)
            if not interrupted.stopping and in_kafka_python():
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def on_signal(signum: int, _frame: object) -> None:
        interrupted.append(signum)
        if nudge and len(interrupted) == 1:
            threading.Thread(target=keep_nudging, name="interrupt-nudge", daemon=True).start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return interrupted


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything on a bare machine: broker, Redis, worker, events, summary, then stop."""
    from models.synthetic import PERSONAS, generate
    from streams.local import RedisServer, Tansu, free_port, redis_binary, tansu_binary

    try:
        tansu_binary()
        redis_binary()
    except Exception as exc:  # MissingTool: the message says how to install it
        raise ConfigError(str(exc)) from None

    workdir = Path(tempfile.mkdtemp(prefix="omniprofile-demo-"))
    broker = redis = worker = None
    interrupted = interrupt_on_signals(nudge=True)
    try:
        say("starting the embedded Kafka-protocol broker (Tansu) ...")
        broker = Tansu().start()
        say(f"  broker on {broker.bootstrap}")
        redis = RedisServer().start()
        say(f"  redis-server on {redis.url}")
        web_port = free_port()
        env = {
            "OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "OMNIPROFILE_REDIS_URL": redis.url,
            "OMNIPROFILE_DATA_DIR": str(workdir / "worker"),
            "OMNIPROFILE_PARTITIONS": str(args.partitions),
            "OMNIPROFILE_KAFKA_SESSION_TIMEOUT": "6",
            "OMNIPROFILE_KAFKA_FETCH_MAX_WAIT_MS": "20",  # Tansu can answer a fetch up to its wait late
            "OMNIPROFILE_HASH_KEY": os.urandom(16).hex(),
            "OMNIPROFILE_LOG_LEVEL": "info",  # "Worker ready" is an info line
            # Short periods, so that the few minutes of the demo see sweeps and persona summaries.
            "OMNIPROFILE_SEGMENT_SWEEP_SECONDS": str(DEMO_SWEEP_SECONDS),
            "OMNIPROFILE_SEGMENT_SUMMARY_SECONDS": str(DEMO_SUMMARY_SECONDS),
            "OMNIPROFILE_RECOVERY_CONSISTENCY_CHECK": "false",  # Tansu misreports end offsets
            "OMNIPROFILE_WEB_PORT": str(web_port),
        }
        settings = load_settings(
            kafka_bootstrap_servers=broker.bootstrap, redis_url=redis.url, partitions=args.partitions
        )
        from streams.admin import OutputFollower, ensure_topics

        names = TopicNames(settings.topic_prefix)
        ensure_topics(settings, names.public + (names.by_customer,))

        say("starting a worker ...")
        worker = Worker(worker_env(env), workdir / "worker.log")
        say(f"  worker ready in {worker.wait_ready():.1f} s (log: {worker.log_path})")
        say(f"  health and metrics: http://127.0.0.1:{web_port}/health and /metrics "
            f"(`omniprofile status --url http://127.0.0.1:{web_port}` while the demo runs)")

        dataset = generate(
            args.customers, seed=args.seed, start=default_start(args.days), days=args.days, invalid_rate=0.005
        )
        say(
            f"generated {len(dataset.events):,} events of {len(dataset.customers):,} customers "
            f"({len(PERSONAS)} personas) and {len(dataset.invalid):,} invalid messages"
        )
        publish_started = time.monotonic()
        publish_dataset(settings, dataset, args.batch)

        follower = OutputFollower(settings)
        expected = len(dataset.events)
        progress = Progress("processing", expected + len(dataset.invalid))
        deadline = time.monotonic() + args.timeout
        while True:
            follower.poll(500)
            done = follower.events_applied + len(follower.dead_letters)
            progress.update(done, f"{len(follower.latest):,} profiles")
            if follower.events_applied >= expected and len(follower.dead_letters) >= len(dataset.invalid):
                break
            if worker.proc.poll() is not None:
                raise RuntimeError(f"the worker stopped:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not everything was processed within {args.timeout} s ({done:,} so far)")
        elapsed = progress.finish(done, f"{len(follower.latest):,} profiles")
        wait_for_segments(settings, follower, worker)
        print_summary(dataset, follower, redis.url, settings, time.monotonic() - publish_started, elapsed)
        follower.close()
        return 0
    except KeyboardInterrupt:
        interrupted.stopping = True
        say("interrupted: stopping everything")
        return 130
    except Exception as exc:  # noqa: BLE001 - reported, then everything is stopped
        interrupted.stopping = True
        if interrupted:
            say("interrupted: stopping everything")
            return 130
        say(f"omniprofile demo failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        interrupted.stopping = True
        # A second Ctrl-C must not cut the clean-up short (each stop is bounded by a timeout).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if worker is not None:
            worker.stop()
        for service in (redis, broker):
            if service is not None:
                service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


DEMO_SWEEP_SECONDS = 15
DEMO_SUMMARY_SECONDS = 5


def wait_for_segments(settings: Settings, follower: Any, worker: Worker) -> None:
    """Until every profile has a segment in the merged scope (profiles processed before the
    model was ready get theirs at the next sweep) and a persona summary covers them."""
    import redis as redis_lib

    from streams.sinks import RedisLayout

    client = redis_lib.Redis.from_url(settings.redis_url)
    layout = RedisLayout(settings.redis_key_prefix)
    profiles = len(follower.latest)
    progress = Progress("assigning segments", profiles)
    deadline = time.monotonic() + 2 * DEMO_SWEEP_SECONDS + 20
    covered = 0
    try:
        while time.monotonic() < deadline and worker.proc.poll() is None:
            follower.poll(500)
            summary = client.hget(layout.segment_summaries(), "all")
            covered = orjson.loads(summary)["customers"] if summary else 0
            progress.update(covered, "in the latest persona summary")
            if covered >= profiles:
                break
        progress.finish(covered, "in the latest persona summary")
        time.sleep(2 * settings.redis_flush_interval_ms / 1000 + 0.5)  # let the last Redis flush land
        follower.poll(500)
    finally:
        client.close()


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_summary(dataset: Any, follower: Any, redis_url: str, settings: Settings, total_s: float, proc_s: float) -> None:
    import redis as redis_lib

    from streams.sinks import RedisLayout

    client = redis_lib.Redis.from_url(redis_url)
    layout = RedisLayout(settings.redis_key_prefix)
    profiles = {k: u["profile"] for k, u in follower.latest.items() if u}
    truth = {c.customer_id: c for c in dataset.customers}

    print()
    print(format_table(
        ["", "value"],
        [
            ["events published", len(dataset.events)],
            ["invalid messages published", len(dataset.invalid)],
            ["profiles", len(profiles)],
            ["profiles in Redis", sum(1 for _ in client.scan_iter(match=layout.profile("*"), count=1000))],
            ["dead letters", len(follower.dead_letters)],
            ["profiles merged into another (identity)", len(follower.tombstones)],
            ["identity conflicts refused", int(client.hget(layout.stats(), "identity_conflicts") or 0)],
            ["profile updates published", follower.updates_seen],
            ["publish + process time (s)", round(total_s, 1)],
            ["events/s end to end", round(len(dataset.events) / max(total_s, 1e-9))],
        ],
        title="== run ==",
    ))

    per_channel: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0, 0.0])
    for p in profiles.values():
        for name, ch in p["channels"].items():
            row = per_channel[name]
            row[0] += 1
            row[1] += ch["events"]
            row[2] += ch["orders"]
            row[3] += ch["revenue"]
    rows = [[name, int(r[0]), int(r[1]), int(r[2]), round(r[3], 2)] for name, r in sorted(per_channel.items(), key=lambda kv: -kv[1][1])]
    print()
    print(format_table(["channel", "customers", "events", "orders", "revenue"], rows, title="== per channel =="))

    print()
    sample_rows = []
    seen_personas: set[str] = set()
    for cid, p in sorted(profiles.items()):
        t = truth.get(cid)
        if t is None or t.persona in seen_personas:
            continue
        seen_personas.add(t.persona)
        fields = client.hgetall(layout.profile(cid))
        s = p["summary"]
        sample_rows.append([
            cid, t.persona, " > ".join(p["journey"]["channels"]), s["orders"], s["revenue"], s["rfm"]["score"],
            (s["top_categories"] or ["-"])[0],
            "-" if "email" not in s or s["email"]["open_rate"] is None else s["email"]["open_rate"],
            fields.get(b"version", b"?").decode(),
        ])
    print(format_table(
        ["customer", "persona (truth)", "channels by first touch", "orders", "revenue", "RFM", "top category",
         "email open rate", "redis version"],
        sample_rows, title="== one sample profile per persona ==",
    ))

    print_segments(client, layout, profiles, truth)
    counters = {k.decode(): float(v) for k, v in client.hgetall(layout.journeys()).items()}
    if counters:
        print()
        print(format_journeys("since the start", counters))
        print("(the same tables: omniprofile hops; a 7-day window: omniprofile hops --window 7d)")
    raw = client.hget(layout.segment_summaries(), "movers")
    if raw:
        print()
        print(format_summaries(orjson.loads(raw), limit=10))
        print("(all pairs: omniprofile segments --scope movers)")
    raw = client.hget(layout.segment_summaries(), "all")
    if raw:
        print()
        print(format_summaries(orjson.loads(raw)))
        print("(the same table: omniprofile segments; per channel: omniprofile segments --scope amazon)")

    reasons = collections.Counter(d["error"].split(":")[0].split(" (")[0] for d in follower.dead_letters)
    print()
    print(format_table(["dead-letter reason (field or kind)", "messages"], sorted(reasons.items(), key=lambda kv: -kv[1]),
                       title="== dead letters =="))
    if sample_rows:
        cid = sample_rows[0][0]
        print(f"\n== profile {cid} as served from Redis (omniprofile profile {cid}), abridged ==")
        from models.view import decode_profile_json

        raw = decode_profile_json(client.hget(layout.profile(cid), "json"))
        raw["channels"] = {k: {"events": v["events"], "orders": v["orders"], "last_seen": v["last_seen"]}
                           for k, v in raw["channels"].items()}
        print(orjson.dumps(raw, option=orjson.OPT_INDENT_2).decode()[:4000])
    client.close()


def print_segments(client: Any, layout: Any, profiles: dict[str, dict], truth: dict[str, Any]) -> None:
    """Segments of the merged scope against the generator's personas, and scopes with segments."""
    sizes = {k.decode(): int(v) for k, v in client.hgetall(layout.segment_sizes("all")).items()}
    members: dict[str, list[str]] = collections.defaultdict(list)
    for cid, p in profiles.items():
        if p.get("segment"):
            members[p["segment"]].append(cid)
    rows = []
    for seg in sorted(members, key=lambda s: -len(members[s])):
        personas = collections.Counter(truth[c].persona for c in members[seg] if c in truth)
        top, count = personas.most_common(1)[0] if personas else ("-", 0)
        revenue = sum(profiles[c]["summary"]["revenue"] for c in members[seg]) / len(members[seg])
        rows.append([seg, sizes.get(seg, 0), len(members[seg]), top, round(100 * count / max(1, sum(personas.values()))),
                     round(revenue, 2)])
    print()
    print(format_table(["segment", "size (Redis)", "profiles", "most common persona (truth)", "% of members",
                        "avg revenue"], rows, title="== segments (scope: all) =="))
    scored = [p for c, p in profiles.items() if c in truth and p.get("segment")]
    if scored:
        try:
            from sklearn.metrics import adjusted_rand_score
        except ImportError:
            return
        ari = adjusted_rand_score([truth[p["customer_id"]].persona for p in scored], [p["segment"] for p in scored])
        print(f"adjusted Rand index against the personas: {ari:.3f} over {len(scored):,} customers")
    scopes = collections.Counter(scope for p in profiles.values() for scope in p.get("segments", {}))
    print(format_table(["scope", "profiles with a segment"], sorted(scopes.items()), title="== scopes =="))


# --- segments --------------------------------------------------------------------------------


def _names(items: list[dict], n: int = 2) -> str:
    return ", ".join(f"{i['name']} {round(100 * i['share'])}%" for i in items[:n]) or "-"


def format_summaries(document: dict[str, Any], limit: int | None = None) -> str:
    """The persona table of one scope's ``SegmentSummaries`` (the ``limit`` largest segments)."""
    movers = document["scope"] == "movers"
    rows = [
        [
            s["segment"], s["label"], s["size"], f"{100 * s['share']:.1f}%", _names(s["top_channels"]),
            _names(s["top_interests"]), s["age_band"] or "-", _names(s["devices"], 1), s["avg_spend"],
            f"{100 * s['discount_share']:.0f}%", f"{100 * s['email_open_rate']:.0f}%",
            f"{100 * s['app_user_share']:.0f}%",
            *([_names(s.get("segments", []))] if movers else []),
        ]
        for s in document["segments"][:limit]
    ]
    what = "movers by channel pair (a customer counts in every pair)" if movers else f"segments, scope {document['scope']}"
    title = (
        f"== {what}: {document['customers']:,} {'memberships' if movers else 'customers'} "
        f"({document['ts']}, {document['partitions_reported']}/{document['partitions']} partitions) =="
    )
    return format_table(
        ["hop" if movers else "segment", "label", "size", "share", "top channels (events)", "top interests (members)",
         "age", "main device", "avg spend", "disc. orders", "email opens", "app users",
         *(["their segments"] if movers else [])],
        rows, title=title,
    )


def read_summaries(settings: Settings) -> dict[str, dict[str, Any]]:
    """The persona summaries in Redis, by scope."""
    import redis as redis_lib

    from streams.sinks import RedisLayout

    client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
    try:
        raw = client.hgetall(RedisLayout(settings.redis_key_prefix).segment_summaries())
    except redis_lib.RedisError as exc:
        raise ConfigError(f"cannot read from Redis at {settings.redis_url_safe} ({exc}); check OMNIPROFILE_REDIS_URL")
    finally:
        client.close()
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


def cmd_segments(args: argparse.Namespace) -> int:
    """Print the segment personas of a scope (or every scope) from Redis."""
    settings = load_settings()
    summaries = read_summaries(settings)
    if not summaries:
        print(
            f"no segment summaries in Redis at {settings.redis_url_safe} yet: the workers publish them every "
            f"{settings.segment_summary_seconds:g} s once a segment model is ready "
            "(OMNIPROFILE_SEGMENT_WARMUP feature vectors)",
            file=sys.stderr,
        )
        return 1
    scopes = sorted(summaries) if args.scope == "*" else [args.scope]
    missing = [s for s in scopes if s not in summaries]
    if missing:
        print(f"no segments for scope {missing[0]!r}; scopes with segments: {', '.join(sorted(summaries))}",
              file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({s: summaries[s] for s in scopes}, option=orjson.OPT_INDENT_2).decode())
        return 0
    print("\n\n".join(format_summaries(summaries[s]) for s in scopes))
    others = sorted(set(summaries) - set(scopes))
    if others:
        print(f"\nother scopes: {', '.join(others)} (omniprofile segments --scope NAME, or --scope '*')")
    return 0


# --- hops ------------------------------------------------------------------------------------


def read_journeys(settings: Settings, window: str, day: str | None) -> tuple[str, dict[str, float]]:
    """(title, counters) of the journey view asked for, from Redis."""
    import redis as redis_lib

    from streams.sinks import RedisLayout

    layout = RedisLayout(settings.redis_key_prefix)
    if window == "all":
        name, title = layout.journeys(), "since the start"
    else:
        today = datetime.now(timezone.utc).date()
        start = datetime.fromisoformat(day).date() if day else today - timedelta(days=6 if window == "7d" else 0)
        name = layout.journey_window(window, start.isoformat())
        span = 7 if window == "7d" else 1
        title = f"event time {start.isoformat()} to {(start + timedelta(days=span - 1)).isoformat()}"
    client = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
    try:
        raw = client.hgetall(name)
    except redis_lib.RedisError as exc:
        raise ConfigError(f"cannot read from Redis at {settings.redis_url_safe} ({exc}); check OMNIPROFILE_REDIS_URL")
    finally:
        client.close()
    return title, {k.decode(): float(v) for k, v in raw.items()}


def format_journeys(title: str, counters: dict[str, float], top: int = 8) -> str:
    """The transition matrix, conversion by hop and attribution by model, as tables."""
    from models.journeys import ATTRIBUTION_MODELS, split_totals

    views = split_totals(counters)
    transitions, conversions = views["transitions"], views["conversions"]
    traffic: collections.Counter = collections.Counter()
    for (a, b), n in transitions.items():
        traffic[a] += n
        traffic[b] += n
    channels = [c for c, _ in traffic.most_common(top)]
    matrix = [[a] + [int(transitions.get((a, b), 0)) for b in channels] for a in channels]
    parts = [format_table(["from \\ to", *channels], matrix,
                          title=f"== channel hops, {title} (top {len(channels)} channels) ==")]
    pairs = sorted(transitions.items(), key=lambda kv: -kv[1])[:15]
    parts.append(format_table(
        ["hop", "hops", "converted", "conversion rate"],
        [[f"{a} > {b}", int(n), int(conversions.get((a, b), 0)), f"{100 * conversions.get((a, b), 0) / n:.1f}%"]
         for (a, b), n in pairs if n > 0],
        title="== hops and their conversion (a purchase on the destination within the window) ==",
    ))
    credit, revenue = views["credit"], views["revenue"]
    paths = credit.pop("path", {})
    names = sorted({c for model in credit.values() for c in model}, key=lambda c: -credit.get("linear", {}).get(c, 0))
    rows = [
        [c, *(round(credit.get(m, {}).get(c, 0.0), 1) for m in ATTRIBUTION_MODELS),
         int(credit.get("assists", {}).get(c, 0)), round(revenue.get("linear", {}).get(c, 0.0), 2)]
        for c in names
    ]
    parts.append(format_table(
        ["channel", *(m.replace("_", " ") for m in ATTRIBUTION_MODELS), "assists", "revenue (linear)"], rows,
        title="== attribution: conversions credited per channel ==",
    ))
    top_paths = sorted(((p, n) for p, n in paths.items() if n > 0), key=lambda kv: -kv[1])[:10]
    total = sum(n for n in paths.values() if n > 0)
    parts.append(format_table(
        ["channels touched before the purchase (window)", "purchases", "share", "revenue"],
        [[p.replace(">", " > "), int(n), f"{100 * n / total:.1f}%", round(revenue.get("path", {}).get(p, 0.0), 2)]
         for p, n in top_paths],
        title="== converting paths ==",
    ))
    late = sum(v for k, v in counters.items() if k.startswith("late|"))
    if late:
        parts.append(f"late (older than the windows kept, or than a customer's kept timeline): {int(late):,}")
    return "\n\n".join(parts)


def cmd_hops(args: argparse.Namespace) -> int:
    """Print the channel transition matrix, conversions and attribution from Redis."""
    settings = load_settings()
    title, counters = read_journeys(settings, args.window, args.date)
    if not counters:
        print(f"no journey counters for this window ({title}) in Redis at {settings.redis_url_safe}", file=sys.stderr)
        return 1
    if args.json:
        from models.journeys import split_totals

        views = split_totals(counters)
        out = {
            "window": args.window, "title": title,
            "transitions": {f"{a}>{b}": n for (a, b), n in views["transitions"].items()},
            "conversions": {f"{a}>{b}": n for (a, b), n in views["conversions"].items()},
            "credit": views["credit"], "revenue": views["revenue"],
            "late": sum(v for k, v in counters.items() if k.startswith("late|")),
        }
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return 0
    print(format_journeys(title, counters, args.top))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="seeded synthetic events with ground truth, to a file or the topics")
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=28, help="length of the period the events cover")
    p.add_argument("--start", help="first day (ISO-8601); default: --days days ago, so events end around now")
    p.add_argument("--invalid-rate", type=float, default=0.0, help="invalid messages per valid event (e.g. 0.01)")
    p.add_argument("--out", help="write the events as JSONL here (and the truth next to it)")
    p.add_argument("--truth", help="where the ground truth goes (default: OUT with .truth.jsonl)")
    p.add_argument("--publish", action="store_true", help="publish to the input topics (OMNIPROFILE_* settings)")
    p.add_argument("--batch", type=int, default=1, help="events per message when publishing (JSON arrays)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("segments", help="print the segment personas (summaries) from Redis")
    p.add_argument("--scope", default="all", help="'all' (default), a channel, or '*' for every scope")
    p.add_argument("--json", action="store_true", help="the SegmentSummaries documents as JSON")
    p.set_defaults(func=cmd_segments)

    p = sub.add_parser("hops", help="channel hops, conversions and attribution from Redis")
    p.add_argument("--window", choices=["all", "7d", "day"], default="all",
                   help="all-time totals (default), a 7-day window or one day, by event time")
    p.add_argument("--date", help="first day of the window (YYYY-MM-DD); default: the window ending today")
    p.add_argument("--top", type=int, default=8, help="channels in the matrix")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hops)

    p = sub.add_parser("demo", help="run everything on this machine: broker, Redis, worker, events, summary")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=28)
    p.add_argument("--batch", type=int, default=1, help="events per message (JSON arrays when > 1)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for processing")
    p.set_defaults(func=cmd_demo)
