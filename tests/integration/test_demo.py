"""``omniprofile demo`` on its own: it runs to the end with exit 0, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from streams.commands import worker_env


def demo(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "demo", *args],
        env=worker_env({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_started_by(bootstrap: str) -> list[int]:
    """PIDs whose environment points at this demo's broker (the demo's worker)."""
    needle = f"OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS={bootstrap}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_demo_runs_end_to_end_and_prints_a_summary():
    proc = demo("--customers", "150")
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    for section in ("== run ==", "== per channel ==", "== one sample profile per persona ==", "== dead letters ==",
                    "== segments (scope: all) ==", "== channel hops, since the start", "== attribution:",
                    "== converting paths =="):
        assert section in out
    published = int(re.search(r"events published\s+([\d,]+)", out).group(1).replace(",", ""))
    invalid = int(re.search(r"invalid messages published\s+([\d,]+)", out).group(1).replace(",", ""))
    dead = int(re.search(r"dead letters\s+([\d,]+)", out).group(1).replace(",", ""))
    profiles = int(re.search(r"\nprofiles\s+([\d,]+)", out).group(1).replace(",", ""))
    in_redis = int(re.search(r"profiles in Redis\s+([\d,]+)", out).group(1).replace(",", ""))
    assert published > 1000 and dead == invalid > 0 and profiles == in_redis > 150
    # Every profile has a segment in the merged scope, and the persona summary counts them all.
    summarized = int(re.search(r"== segments, scope all: ([\d,]+) customers", out).group(1).replace(",", ""))
    assert summarized == profiles
    assert "processing" in err  # progress was shown


def test_ctrl_c_stops_the_broker_redis_and_worker():
    proc = demo("--customers", "20000", "--timeout", "600")
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "publishing" in line or "generated" in line:
            break
        assert line or proc.poll() is None, "".join(lines)
    text = "".join(lines)
    broker_port = int(re.search(r"broker on 127\.0\.0\.1:(\d+)", text).group(1))
    redis_port = int(re.search(r"redis-server on redis://127\.0\.0\.1:(\d+)", text).group(1))
    assert listening(broker_port) and listening(redis_port)
    assert processes_started_by(f"127.0.0.1:{broker_port}"), "the worker should be running"

    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does to the foreground group
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert not listening(broker_port)
    assert not listening(redis_port)
    assert processes_started_by(f"127.0.0.1:{broker_port}") == []
