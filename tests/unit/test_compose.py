"""Structure checks of the deployment files: docker-compose.yml, Dockerfile, .env.example.

No Docker engine is needed. The compose file is parsed with PyYAML and checked against the code
it deploys: setting names against :class:`streams.settings.Settings`, values against
:func:`streams.settings.load_settings`, topic names against :class:`streams.topics.TopicNames`.
The kafka-init script is run with ``sh`` against a stand-in ``kafka-topics.sh`` that records
what it is asked to do.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from streams.settings import ENV_PREFIX, Settings, load_settings
from streams.topics import TopicNames

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

SETTING_NAMES = {ENV_PREFIX + name.upper(): name for name in Settings.model_fields}
PUBLIC_TOPICS = TopicNames().public
COMPACTED = {TopicNames().updates, TopicNames().segment_summaries, TopicNames().identity}  # the latest per key


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services in docker-compose.yml"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_settings reads the process environment: keep the runner's OMNIPROFILE_* out of it."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def env_of(service: dict) -> dict[str, str]:
    """A service's `environment`, as a dict, whether written as a mapping or as a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        env = dict(pairs)
    return {str(k): ("" if v is None else str(v)) for k, v in env.items()}


_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(LookupError):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Docker compose's variable substitution (the subset the spec defines), over ``env``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        if op is None:
            return val or ""
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op in (":?", "?"):
            if val is None or (op == ":?" and not val):
                raise MissingVariable(f"{name}: {arg}")
            return val
        if op == ":+":
            return arg if val else ""
        return arg if val is not None else ""  # "+"

    return _VAR.sub(sub, value)


def referenced_variables(node: object) -> set[str]:
    """Every ${NAME} / $NAME that compose substitutes anywhere in the file."""
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            found |= referenced_variables(k) | referenced_variables(v)
    elif isinstance(node, list):
        for v in node:
            found |= referenced_variables(v)
    elif isinstance(node, str):
        for m in _VAR.finditer(node):
            if m.group(0) != "$$":
                found.add(m.group("name") or m.group("bare"))
    return found


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().removeprefix("kafka://").rpartition(":")
    assert host and port.isdigit(), f"not host:port: {address!r}"
    return host, int(port)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """KAFKA_LISTENERS / KAFKA_ADVERTISED_LISTENERS: NAME://host:port,... -> {NAME: (host, port)}."""
    out: dict[str, tuple[str, int]] = {}
    for item in value.split(","):
        name, sep, address = item.strip().partition("://")
        assert sep, f"not NAME://host:port: {item!r}"
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def field_kwargs(env: dict[str, str]) -> dict[str, str]:
    return {SETTING_NAMES[k]: v for k, v in env.items() if k in SETTING_NAMES}


def worker_env_resolved(services: dict, **given: str) -> dict[str, str]:
    return {k: interpolate(v, given) for k, v in env_of(services["worker"]).items()}


# ---------------------------------------------------------------------------------------------
# the services


def test_the_four_services_exist(services: dict) -> None:
    assert {"kafka", "kafka-init", "redis", "worker"} <= set(services)


def test_kafka_is_kraft_and_there_is_no_zookeeper(compose: dict, services: dict) -> None:
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:3.9"), kafka["image"]
    env = env_of(kafka)
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles

    for name, service in services.items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(service.get("image", "")).lower()
        assert not [k for k in env_of(service) if "ZOOKEEPER" in k.upper()], name

    # The controller quorum is this node, on the controller listener.
    bound = listeners(env["KAFKA_LISTENERS"])
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound
    assert controller not in listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    voters = [v.strip() for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")]
    node_id, _, address = voters[0].partition("@")
    assert node_id == env["KAFKA_NODE_ID"]
    host, port = host_port(address)
    assert host in ("kafka", kafka.get("hostname")) and port == bound[controller][1]
    assert env.get("CLUSTER_ID"), "a fixed CLUSTER_ID keeps the KRaft storage valid across restarts"


def test_kafka_single_node_settings(services: dict) -> None:
    env = env_of(services["kafka"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"


def test_worker_bootstrap_is_the_advertised_internal_listener(services: dict) -> None:
    kafka_env = env_of(services["kafka"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka_env["KAFKA_LISTENERS"])
    internal = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert internal in advertised and internal in bound
    assert advertised[internal][1] == bound[internal][1]
    assert advertised[internal][0] in ("kafka", services["kafka"].get("hostname"))

    bootstrap = env_of(services["worker"])["OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS"]
    servers = [host_port(s) for s in bootstrap.split(",") if s.strip()]
    assert servers and all(s == advertised[internal] for s in servers), (servers, advertised[internal])


def test_kafka_external_listener_is_published_for_the_host(services: dict) -> None:
    kafka = services["kafka"]
    env = env_of(kafka)
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    external = [name for name, (host, _) in advertised.items() if host == "localhost"]
    assert len(external) == 1, advertised
    port = advertised[external[0]][1]
    assert port == 9094 and listeners(env["KAFKA_LISTENERS"])[external[0]][1] == port
    published = [str(p) for p in kafka.get("ports", [])]
    assert any(p.split(":")[-2:] == [str(port), str(port)] for p in published), published


def test_kafka_has_a_healthcheck_and_a_named_data_volume(compose: dict, services: dict) -> None:
    kafka = services["kafka"]
    test = kafka["healthcheck"]["test"]
    assert "kafka-broker-api-versions.sh" in " ".join(test if isinstance(test, list) else [test])
    log_dirs = env_of(kafka)["KAFKA_LOG_DIRS"]
    named = [str(v).split(":") for v in kafka.get("volumes", [])]
    assert any(len(v) >= 2 and v[0] in (compose.get("volumes") or {}) and v[1] == log_dirs for v in named), named


def test_redis_is_persistent_and_healthchecked(compose: dict, services: dict) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7.4")
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "ping" in " ".join(redis["healthcheck"]["test"])
    mounts = [str(v).split(":") for v in redis.get("volumes", [])]
    assert any(v[0] in (compose.get("volumes") or {}) and v[1] == "/data" for v in mounts), mounts


def test_worker_redis_url_points_at_the_redis_service(services: dict) -> None:
    url = urlsplit(env_of(services["worker"])["OMNIPROFILE_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname in services and "redis" in str(services[url.hostname]["image"])
    command = services[url.hostname].get("command") or []
    command = command if isinstance(command, list) else shlex.split(command)
    server_port = int(command[command.index("--port") + 1]) if "--port" in command else 6379
    assert (url.port or 6379) == server_port


# ---------------------------------------------------------------------------------------------
# the worker's configuration


def test_worker_variables_are_settings_fields(services: dict) -> None:
    env = env_of(services["worker"])
    ours = [k for k in env if k.startswith(ENV_PREFIX)]
    assert ours, "the worker gets no OMNIPROFILE_* variables"
    unknown = sorted(set(ours) - set(SETTING_NAMES))
    assert not unknown, f"not fields of streams.settings.Settings: {unknown}"
    needed = {
        "OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS", "OMNIPROFILE_REDIS_URL", "OMNIPROFILE_TOPIC_PREFIX",
        "OMNIPROFILE_PARTITIONS", "OMNIPROFILE_REPLICATION_FACTOR", "OMNIPROFILE_TABLE_STORE",
        "OMNIPROFILE_DATA_DIR", "OMNIPROFILE_HASH_KEY", "OMNIPROFILE_LOG_LEVEL",
    }
    assert needed <= set(ours), sorted(needed - set(ours))


def test_every_substituted_omniprofile_variable_is_a_settings_field(compose: dict) -> None:
    ours = {v for v in referenced_variables(compose) if v.startswith(ENV_PREFIX)}
    assert not sorted(ours - set(SETTING_NAMES))


def test_worker_literal_values_pass_validation(services: dict, clean_env: None) -> None:
    env = env_of(services["worker"])
    literals = {k: v for k, v in env.items() if k in SETTING_NAMES and "$" not in v}
    assert {"OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS", "OMNIPROFILE_REDIS_URL", "OMNIPROFILE_TABLE_STORE"} <= set(literals)
    settings = load_settings(**field_kwargs(literals))
    assert settings.table_store.startswith("rocksdict://")
    assert str(settings.data_dir) == "/data"


def test_worker_values_with_their_defaults_pass_validation(services: dict, clean_env: None) -> None:
    key = "0" * 64
    resolved = worker_env_resolved(services, OMNIPROFILE_HASH_KEY=key)
    settings = load_settings(**field_kwargs(resolved))
    assert settings.hash_key.get_secret_value() == key and not settings.uses_development_hash_key
    assert settings.partitions == 8 and settings.replication_factor == 1 and settings.topic_prefix == ""


def test_worker_refuses_to_start_without_a_hash_key(services: dict) -> None:
    for env in ({}, {"OMNIPROFILE_HASH_KEY": ""}):
        with pytest.raises(MissingVariable):
            worker_env_resolved(services, **env)


def test_worker_and_kafka_init_agree_on_topics(services: dict) -> None:
    worker, init = env_of(services["worker"]), env_of(services["kafka-init"])
    for name in ("OMNIPROFILE_TOPIC_PREFIX", "OMNIPROFILE_PARTITIONS", "OMNIPROFILE_REPLICATION_FACTOR"):
        assert worker[name] == init[name], name
    assert interpolate(init["OMNIPROFILE_PARTITIONS"], {}) == "8"
    assert interpolate(init["OMNIPROFILE_PARTITIONS"], {"OMNIPROFILE_PARTITIONS": "12"}) == "12"
    assert interpolate(init["OMNIPROFILE_REPLICATION_FACTOR"], {}) == "1"
    assert interpolate(init["OMNIPROFILE_TOPIC_PREFIX"], {"OMNIPROFILE_TOPIC_PREFIX": "p."}) == "p."


def test_worker_is_scalable(services: dict) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker
    for port in worker.get("ports", []):
        # only "container port" entries are compatible with --scale; any host side is not
        published = port.get("published") if isinstance(port, dict) else (str(port).split(":")[:-1] or None)
        assert not published, f"fixed host port on a scaled service: {port!r}"


def test_worker_state_is_per_container(compose: dict, services: dict) -> None:
    named = set(compose.get("volumes") or {})
    data_dir = env_of(services["worker"])["OMNIPROFILE_DATA_DIR"]
    for volume in services["worker"].get("volumes", []):
        if isinstance(volume, dict):
            assert volume.get("type", "volume") == "volume" and not volume.get("source"), volume
            continue
        parts = str(volume).split(":")
        # "/data" alone is an anonymous volume: one per container. "name:/data" or "./x:/data" is shared.
        assert len(parts) == 1, f"shared mount on the worker: {volume!r}"
        assert parts[0] not in named
    mounts = [str(v if not isinstance(v, dict) else v.get("target")) for v in services["worker"].get("volumes", [])]
    assert data_dir in mounts or data_dir == "/data"  # the image declares VOLUME /data


def test_worker_waits_for_topics_and_redis(services: dict) -> None:
    depends = services["worker"]["depends_on"]
    assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_worker_lifecycle(services: dict) -> None:
    worker = services["worker"]
    assert worker["restart"] == "unless-stopped"
    grace = str(worker["stop_grace_period"])
    m = re.fullmatch(r"(\d+)s", grace)
    assert m and int(m.group(1)) >= 30, grace
    assert worker.get("build") in (".", {"context": "."}) or worker["build"].get("context") == "."


def test_worker_command_matches_the_image_entrypoint(services: dict) -> None:
    worker = services["worker"]
    assert "entrypoint" not in worker
    command = worker["command"] if isinstance(worker["command"], list) else shlex.split(worker["command"])
    assert dockerfile_exec("ENTRYPOINT") + command == ["omniprofile", "worker"]


# ---------------------------------------------------------------------------------------------
# kafka-init


def init_script(services: dict) -> str:
    init = services["kafka-init"]
    assert init["entrypoint"] == ["/bin/sh", "-c"], init["entrypoint"]
    assert isinstance(init["command"], list) and len(init["command"]) == 1
    return init["command"][0]


def created_topics(script: str) -> dict[str, list[str]]:
    """The `create NAME [args]` lines of the script: {NAME: args}."""
    out: dict[str, list[str]] = {}
    for line in script.splitlines():
        if re.match(r"\s*create\s+\S", line):
            words = shlex.split(line, comments=True)
            assert words[1] not in out, f"created twice: {words[1]}"
            out[words[1]] = words[2:]
    return out


def test_kafka_init_uses_the_kafka_image(services: dict) -> None:
    assert services["kafka-init"]["image"] == services["kafka"]["image"]
    assert services["kafka-init"].get("restart", "no") == "no"


def test_kafka_init_creates_every_public_topic(services: dict) -> None:
    script = init_script(services)
    created = created_topics(script)
    missing = [t for t in PUBLIC_TOPICS if t not in created]
    assert not missing, f"kafka-init does not create {missing}"
    assert "--if-not-exists" in script
    assert "--partitions" in script and "--replication-factor" in script


def test_only_latest_per_key_topics_are_compacted(services: dict) -> None:
    created = created_topics(init_script(services))
    for topic, args in created.items():
        compact = "cleanup.policy=compact" in args
        assert compact == (topic in COMPACTED), (topic, args)


STUB = r'''#!{python}
"""A stand-in for kafka-topics.sh: keeps topics in a JSON file, logs every call."""
import json, os, sys
state_file = os.environ["STUB_STATE"]
with open(state_file) as f:
    state = json.load(f)
args = sys.argv[1:]
state["calls"].append(args)
def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default
assert opt("--bootstrap-server") == "kafka:9092", args
if "--list" in args:
    print("\n".join(sorted(state["topics"])))
elif "--create" in args:
    name = opt("--topic")
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    if name in state["topics"]:
        if "--if-not-exists" not in args:
            print(f"Topic '{{name}}' already exists.", file=sys.stderr)
            sys.exit(1)
    else:
        state["topics"][name] = {{"partitions": int(opt("--partitions")), "rf": int(opt("--replication-factor")), "configs": configs}}
        print(f"Created topic {{name}}.")
elif "--describe" in args:
    for name, t in sorted(state["topics"].items()):
        print(f"Topic: {{name}}\tTopicId: AAAAAAAAAAAAAAAAAAAAAA\tPartitionCount: {{t['partitions']}}\t"
              f"ReplicationFactor: {{t['rf']}}\tConfigs: {{','.join(t['configs'])}}")
        for p in range(t["partitions"]):
            print(f"\tTopic: {{name}}\tPartition: {{p}}\tLeader: 1\tReplicas: 1\tIsr: 1\tElr: \tLastKnownElr: ")
else:
    sys.exit(f"stub: unexpected call {{args}}")
with open(state_file, "w") as f:
    json.dump(state, f)
'''


@pytest.fixture()
def run_init(services: dict, tmp_path: Path):
    """Run kafka-init's script with sh against the stub; returns (completed process, state)."""
    for tool in ("sh", "awk", "grep", "mktemp"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "kafka-topics.sh"
    stub.write_text(STUB.format(python=sys.executable), encoding="utf-8")
    stub.chmod(0o755)
    state_file = tmp_path / "state.json"

    def run(compose_vars: dict[str, str], topics: dict | None = None):
        state_file.write_text(json.dumps({"topics": topics or {}, "calls": []}), encoding="utf-8")
        init = services["kafka-init"]
        env = {k: interpolate(v, compose_vars) for k, v in env_of(init).items()}
        env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                   STUB_STATE=str(state_file), TMPDIR=str(tmp_path))
        script = interpolate(init_script(services), compose_vars)
        proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        return proc, json.loads(state_file.read_text(encoding="utf-8"))

    return run


def test_kafka_init_script_creates_the_topics(run_init) -> None:
    proc, state = run_init({"OMNIPROFILE_TOPIC_PREFIX": "shop1.", "OMNIPROFILE_PARTITIONS": "3"})
    assert proc.returncode == 0, proc.stderr
    expected = set(TopicNames("shop1.").public)
    assert set(state["topics"]) == expected
    for name, topic in state["topics"].items():
        assert topic["partitions"] == 3 and topic["rf"] == 1, (name, topic)
        compacted = {TopicNames("shop1.").updates, TopicNames("shop1.").segment_summaries, TopicNames("shop1.").identity}
        assert ("cleanup.policy=compact" in topic["configs"]) == (name in compacted)
    creates = [c for c in state["calls"] if "--create" in c]
    assert len(creates) == len(expected) and all("--if-not-exists" in c for c in creates)


def test_kafka_init_script_is_idempotent(run_init) -> None:
    _, state = run_init({})
    assert set(state["topics"]) == set(PUBLIC_TOPICS)
    assert all(t["partitions"] == 8 for t in state["topics"].values())
    proc, again = run_init({}, topics=state["topics"])
    assert proc.returncode == 0, proc.stderr
    assert again["topics"] == state["topics"]
    assert not [c for c in again["calls"] if "--create" in c]


def test_kafka_init_script_rejects_disagreeing_topics(run_init) -> None:
    _, state = run_init({})
    topics = dict(state["topics"])
    topics["events.email"] = dict(topics["events.email"], partitions=4)
    proc, _ = run_init({}, topics=topics)
    assert proc.returncode != 0
    assert "events.email" in proc.stderr and "OMNIPROFILE_PARTITIONS" in proc.stderr

    topics = dict(state["topics"])
    topics["profiles.updates"] = dict(topics["profiles.updates"], configs=[])
    proc, _ = run_init({}, topics=topics)
    assert proc.returncode != 0 and "cleanup.policy=compact" in proc.stderr


# ---------------------------------------------------------------------------------------------
# .env.example

_ASSIGNMENT = re.compile(r"^(?P<comment>#\s*)?(?P<name>OMNIPROFILE_[A-Z0-9_]+)=(?P<value>.*)$")


def env_example() -> list[tuple[bool, str, str, int]]:
    """(commented out, name, value, line index) for every OMNIPROFILE_* assignment."""
    out = []
    for i, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()):
        m = _ASSIGNMENT.match(line.strip())
        if m:
            out.append((bool(m.group("comment")), m.group("name"), m.group("value").strip(), i))
    return out


def test_env_example_names_are_exactly_the_settings() -> None:
    names = [name for _, name, _, _ in env_example()]
    assert len(names) == len(set(names)), "a setting appears twice"
    unknown = sorted(set(names) - set(SETTING_NAMES))
    assert not unknown, f"not fields of streams.settings.Settings: {unknown}"
    missing = sorted(set(SETTING_NAMES) - set(names))
    assert not missing, f"settings missing from .env.example: {missing}"


def test_env_example_documents_every_setting() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for _, name, _, i in env_example():
        doc = lines[i - 1].strip() if i else ""
        assert doc.startswith("#") and not _ASSIGNMENT.match(doc), f"{name}: no comment line above it"
        assert "default" in doc.lower(), f"{name}: the comment does not give the default"


def test_env_example_commented_values_are_the_defaults(clean_env: None) -> None:
    defaults = Settings()
    for commented, name, value, _ in env_example():
        if not commented:
            continue
        field = SETTING_NAMES[name]
        if value == "":
            assert getattr(defaults, field) is None, f"{name}: empty, but the default is set"
        else:
            assert getattr(Settings(**{field: value}), field) == getattr(defaults, field), name


def test_env_example_active_values_are_valid(clean_env: None) -> None:
    active = {SETTING_NAMES[name]: value for commented, name, value, _ in env_example() if not commented}
    assert "hash_key" in active, "OMNIPROFILE_HASH_KEY must be an active line (compose requires it)"
    Settings(**active)


def test_env_example_leaves_secrets_as_placeholders() -> None:
    secrets_ = {ENV_PREFIX + n.upper() for n, f in Settings.model_fields.items() if "Secret" in str(f.annotation)}
    assert secrets_ >= {"OMNIPROFILE_HASH_KEY", "OMNIPROFILE_KAFKA_SASL_PASSWORD"}
    for _, name, value, _ in env_example():
        if name in secrets_:
            assert value == "", f"{name} must be a placeholder in .env.example"
    assert "secrets.token_hex" in ENV_EXAMPLE.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_exec(keyword: str) -> list[str]:
    values = [rest for kw, rest in dockerfile() if kw == keyword]
    assert values, f"no {keyword} in the Dockerfile"
    value = json.loads(values[-1])  # exec form, so signals reach the process
    assert isinstance(value, list)
    return value


def test_dockerfile_entrypoint_is_omniprofile() -> None:
    assert dockerfile_exec("ENTRYPOINT") == ["omniprofile"]
    assert dockerfile_exec("CMD") == ["worker"]


def test_dockerfile_builds_a_non_root_production_image(clean_env: None) -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)
    copied = " ".join(rest for kw, rest in instructions if kw == "COPY")
    for path in ("pyproject.toml", "README.md", "streams", "models"):
        assert path in copied, path
    env: dict[str, str] = {}
    for kw, rest in instructions:
        if kw == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert not sorted(set(ours) - set(SETTING_NAMES))
    assert ours.get("OMNIPROFILE_TABLE_STORE") == "rocksdict://" and ours.get("OMNIPROFILE_DATA_DIR") == "/data"
    load_settings(**field_kwargs(ours))
    volumes = [rest for kw, rest in instructions if kw == "VOLUME"]
    assert any("/data" in v for v in volumes)


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    for needed in (".venv", ".git", "tests", ".omniprofile", ".env"):
        assert needed in patterns, needed
    assert {"__pycache__", "**/__pycache__"} & patterns
    assert {"*.jsonl", "**/*.jsonl"} & patterns


# ---------------------------------------------------------------------------------------------
# docker-compose.secure.yml (the SASL/SCRAM + TLS override; structure only, no Docker here)

SECURE_FILE = ROOT / "docker-compose.secure.yml"


def test_secure_override_takes_no_plaintext_from_clients():
    secure = yaml.safe_load(SECURE_FILE.read_text())["services"]
    env = secure["kafka"]["environment"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = {entry.split("://")[0] for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    # Every listener a client can reach is TLS; plaintext only for the controller inside the container.
    assert all(protocols[name] in ("SSL", "SASL_SSL") for name in advertised)
    assert [name for name, proto in protocols.items() if proto == "PLAINTEXT"] == ["CONTROLLER"]
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert "--port" in secure["redis"]["command"] and secure["redis"]["command"][secure["redis"]["command"].index("--port") + 1] == "0"
    assert "--aclfile" in secure["redis"]["command"]


def test_secure_override_wires_the_workers_settings():
    secure = yaml.safe_load(SECURE_FILE.read_text())["services"]
    env = {k: re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "pw-from-env", v) for k, v in secure["worker"]["environment"].items()}
    assert set(env) <= set(SETTING_NAMES), set(env) - set(SETTING_NAMES)
    settings = load_settings(**{SETTING_NAMES[k]: v for k, v in env.items() if k != "OMNIPROFILE_KAFKA_SSL_CAFILE"})
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    url = urlsplit(settings.redis_url)
    assert url.scheme == "rediss" and url.username == "omniprofile" and "ssl_ca_certs=" in url.query
    assert "pw-from-env" not in settings.redis_url_safe
    # The same secrets directory the certificate script writes.
    assert "./secrets:/secrets:ro" in secure["worker"]["volumes"]
    script = (ROOT / "scripts" / "secure-dev-certs.sh").read_text()
    for name in ("ca.pem", "kafka.pem", "admin.pem", "redis.crt", "redis.key", "users.acl", "kafka_server_jaas.conf"):
        assert name in script
