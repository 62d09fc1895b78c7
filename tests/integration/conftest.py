"""Session fixtures: one real Tansu broker and one real redis-server for the whole run;
a real ``omniprofile worker`` process per test module, each under its own topic prefix,
consumer group and Redis key prefix so modules cannot see each other's data."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.admin import ensure_topics
from streams.commands import Worker, worker_env
from streams.local import RedisServer, Tansu
from streams.settings import Settings, settings_from_env
from streams.throughput import embedded_env
from streams.topics import TopicNames

_stack_ids = itertools.count(1)
ROOT = Path(__file__).resolve().parents[2]


def dev_secrets(workdir: Path, redis_password: str = "unused", redis_prefix: str = "omniprofile:") -> Path:
    """``scripts/secure-dev-certs.sh`` run in ``workdir``: its ``secrets/`` directory (a private CA,
    the Kafka and Redis certificates, the Redis ACL file)."""
    env = {**os.environ, "OMNIPROFILE_KAFKA_SASL_PASSWORD": "unused", "KAFKA_ADMIN_PASSWORD": "unused",
           "OMNIPROFILE_REDIS_PASSWORD": redis_password, "OMNIPROFILE_REDIS_KEY_PREFIX": redis_prefix}
    made = subprocess.run(["sh", str(ROOT / "scripts" / "secure-dev-certs.sh")], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    return workdir / "secrets"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[Tansu]:
    tansu = Tansu().start()
    yield tansu
    tansu.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@dataclass
class Stack:
    """A worker and the settings that reach it."""

    settings: Settings
    env: dict[str, str]
    datadir: Path
    worker: Worker
    names: TopicNames

    def start_worker(self, log_name: str) -> Worker:
        self.worker = Worker(worker_env(self.env), self.datadir / log_name)
        self.worker.wait_ready()
        return self.worker


def make_stack(broker: Tansu, redis_server: RedisServer, tmp: Path, **extra: str) -> Stack:
    n = next(_stack_ids)
    env = {
        # The embedded worker settings of the bench: own topic and key prefixes (t1., t1:), the
        # 20 ms fetch wait and recovery check off that Tansu needs, no metrics port (tests of
        # /health and /metrics set a free one).
        **embedded_env(broker.bootstrap, redis_server.url, f"t{n}."),
        "OMNIPROFILE_APP_ID": f"omniprofile-t{n}",
        "OMNIPROFILE_DATA_DIR": str(tmp / "data"),
        "OMNIPROFILE_HASH_KEY": "integration-test-key",
        **extra,
    }
    settings = settings_from_env(env)
    names = TopicNames(settings.topic_prefix)
    ensure_topics(settings, names.public + (names.by_customer,))
    stack = Stack(settings, env, tmp, worker=None, names=names)  # type: ignore[arg-type]
    stack.start_worker("worker-1.log")
    return stack


@pytest.fixture(scope="module")
def stack(broker: Tansu, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(broker, redis_server, tmp_path_factory.mktemp("stack"))
    yield s
    s.worker.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_ambient_settings() -> Iterator[None]:
    """Tests configure everything explicitly; a developer's OMNIPROFILE_* must not leak in."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OMNIPROFILE_")}
    yield
    os.environ.update(saved)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The fault scenarios' figures, when any ran (tests/integration/test_faults.py)."""
    from tests.integration.faults_report import FIGURES, table, write

    if not FIGURES:
        return
    full = "faults" in (config.option.markexpr or "")
    path = write(FIGURES, full)
    terminalreporter.section(f"fault injection ({'full' if full else 'short'} scenarios)")
    terminalreporter.write_line(table(FIGURES))
    terminalreporter.write_line(f"(also in {path})")
