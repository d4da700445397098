"""Static checks of the container deployment: Dockerfile, docker-compose.yml and Grafana provisioning.

Nothing here starts a container. The checks tie the deployment files to the code they configure: compose
commands must be real CLI subcommands, ``RW_*`` variables real settings, URLs parseable by the code that
reads them, and the dashboard SQL must run against the real schema (on embedded chdb).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from config.settings import Settings, load_settings
from recallwatch.cli import build_parser
from sinks.clickhouse import ServerStore, open_store
from sinks.schema import TABLES
from streams.broker import bootstrap_of

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "recallwatch.json"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "clickhouse.yml"
DASHBOARD_PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "recallwatch.yml"

REQUIRED_SERVICES = ("kafka", "clickhouse", "grafana", "worker", "api")
APP_SERVICES = ("worker", "api", "simulator")  # run the RecallWatch image
NO_HEALTHCHECK = {"simulator"}  # a one-shot job


# --- helpers ------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``.

    ``${VAR:?message}`` raises when VAR is unset or empty, as compose refuses to start.
    """

    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if (op in (":-", ":?") and not current) or (op in ("-", "?") and current is None):
            if op.endswith("?"):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return arg
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def test_interpolate_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    got = interpolate("a$$b ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env)
    assert got == "a$b v v d d  d"
    with pytest.raises(ValueError, match="X"):
        interpolate("${UNSET:?X}", env)


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment (mapping or list form) after interpolation with an empty host environment,
    i.e. the values compose uses when nothing is exported: the defaults written in the file."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): interpolate("" if v is None else str(v), {}) for k, v in raw.items()}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("recallwatch has no subcommands")


def unknown_setting(name: str) -> str | None:
    """Why ``name`` is not a setting ``Settings`` reads from the environment, or None when it is.

    pydantic-settings ignores environment variables that match no field, even with ``extra="forbid"``
    (a typo such as ``RW_KAFKA__URLL`` would silently leave the default), so names are checked against
    the model: ``RW_<field>`` or ``RW_<section>__<field>``.
    """
    config = Settings.model_config
    prefix, delimiter = config.get("env_prefix", ""), config.get("env_nested_delimiter") or "__"
    if not name.startswith(prefix):
        return f"{name} lacks the prefix {prefix}"
    path = name[len(prefix) :].lower().split(delimiter)
    fields: Mapping[str, Any] = Settings.model_fields
    for depth, part in enumerate(path):
        if part not in fields:
            where = "Settings" if depth == 0 else ".".join(path[:depth])
            return f"{name}: {where} has no field {part!r} (fields: {sorted(fields)})"
        annotation = fields[part].annotation
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth < len(path) - 1:
            if not is_model:
                return f"{name}: {'.'.join(path[: depth + 1])} is not a section"
            fields = annotation.model_fields
        elif is_model:
            return f"{name}: {'.'.join(path)} is a whole section, not a value"
    return None


def setting_value(settings: Settings, name: str) -> Any:
    obj: Any = settings
    for part in name[len("RW_") :].lower().split("__"):
        obj = getattr(obj, part)
    return obj


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def healthcheck_python(service: Mapping[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[:3] == ["CMD", "python", "-c"], test
    return str(test[3])


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    data = yaml.safe_load(DATASOURCE_FILE.read_text())
    (ds,) = data["datasources"]
    assert isinstance(ds, dict)
    return ds


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No RW_* variables from the caller's shell (or RW_CONFIG_FILE) leak into a settings check."""
    for name in list(os.environ):
        if name.startswith("RW_"):
            monkeypatch.delenv(name)
    yield monkeypatch


# --- compose structure --------------------------------------------------------------------------------


def test_required_services_exist(services: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks services {missing}"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in NO_HEALTHCHECK:
            continue
        check = service.get("healthcheck")
        assert isinstance(check, dict), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = check.get("test")
        assert test and test != ["NONE"], f"{name}: empty healthcheck test"
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: bad healthcheck {test}"


def test_depends_on_healthy_services_only_waits_for_ones_with_healthchecks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has no check"
    assert {"kafka", "clickhouse"} <= set(services["worker"]["depends_on"])


def test_simulator_is_in_the_demo_profile_and_workers_scale(services: dict[str, Any]) -> None:
    assert services["simulator"].get("profiles") == ["demo"]
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2
    # container_name or a fixed host port would make `--scale worker=N` fail.
    assert "container_name" not in worker and "ports" not in worker


def test_app_services_run_the_project_image(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = services[name]
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context in (".", "./"), f"{name} is not built from the project's Dockerfile"
        assert "entrypoint" not in service, f"{name} overrides the image's recallwatch entrypoint"


def test_commands_are_real_cli_subcommands(services: dict[str, Any]) -> None:
    parser = build_parser()
    choices = subcommands(parser)
    for name in APP_SERVICES:
        command = services[name]["command"]
        assert isinstance(command, list) and command, f"{name}: command must be a non-empty list"
        assert command[0] in choices, f"{name}: {command[0]!r} is not one of {sorted(choices)}"
        try:
            args = parser.parse_args([str(c) for c in command])  # the options must parse too
        except SystemExit as exc:
            pytest.fail(f"{name}: `recallwatch {shlex.join(map(str, command))}` does not parse ({exc})")
        assert args.command == command[0]
    assert services["worker"]["command"] == ["worker"]
    assert services["api"]["command"] == ["api"]
    assert services["simulator"]["command"][0] == "simulate"


# --- RW_* settings ------------------------------------------------------------------------------------


def test_setting_name_check_catches_typos() -> None:
    for good in ("RW_KAFKA__URL", "RW_CLICKHOUSE__URL", "RW_SLACK__TOKEN", "RW_API__HOST", "RW_LOG_LEVEL"):
        assert unknown_setting(good) is None, good
    for typo in (
        "RW_KAFKA__URLL",
        "RW_KAFKAA__URL",
        "RW_KAFKA_URL",
        "RW_KAFKA__URL__HOST",
        "RW_KAFKA",
        "RW_LOGLEVEL",
        "KAFKA__URL",
    ):
        assert unknown_setting(typo) is not None, typo


def test_every_rw_variable_is_a_setting(services: dict[str, Any]) -> None:
    problems = [
        f"{name}: {problem}"
        for name, service in services.items()
        for var in service_env(service)
        if var.startswith("RW_") and var != "RW_CONFIG_FILE" and (problem := unknown_setting(var))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_rw_variables_land_in_settings(
    name: str, services: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in service_env(services[name]).items() if k.startswith("RW_")}
    assert env, f"{name} sets no RW_* variables"
    for var, value in env.items():
        clean_env.setenv(var, value)
    settings = load_settings()
    for var, value in env.items():
        got = setting_value(settings, var)
        if isinstance(got, SecretStr):
            got = got.get_secret_value()
        expected: Any
        if isinstance(got, bool):  # before int: bool("false") is True, pydantic reads it as False
            expected = value.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(got, int | float | Path):
            expected = type(got)(value)
        elif isinstance(got, dict | list):  # complex settings are JSON in the environment
            expected = json.loads(value)
        else:
            expected = value
        assert got == expected, f"{name}: {var}={value!r} gave {got!r}"
    # The roles refuse to run, or fall back to embedded chdb inside the container, without these.
    assert settings.kafka.url, f"{name}: RW_KAFKA__URL is empty"
    if name in ("worker", "api"):
        assert settings.clickhouse.url, f"{name}: RW_CLICKHOUSE__URL is empty (would use embedded chdb)"
        assert not settings.slack.token, "the default Slack token must be empty (console alerts)"
    if name == "api":
        assert settings.api.host == "0.0.0.0"
        assert settings.api.access_policy().anonymous_role is None, "a shared API must require keys"


def test_kafka_url_matches_the_advertised_listener(services: dict[str, Any]) -> None:
    kafka = service_env(services["kafka"])
    advertised = {urlsplit(item).netloc for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name in APP_SERVICES:
        url = service_env(services[name])["RW_KAFKA__URL"]
        assert url.startswith("kafka://")
        assert set(bootstrap_of(url).split(",")) <= advertised, f"{name}: {url} is not advertised by kafka"


def test_kafka_kraft_settings(services: dict[str, Any]) -> None:
    kafka = service_env(services["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = kafka["KAFKA_NODE_ID"]
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@")
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}://" in kafka["KAFKA_LISTENERS"]
    assert controller in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    # kafka-storage format needs a base64url-encoded 16-byte UUID.
    cluster_id = kafka["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "=" * (-len(cluster_id) % 4))) == 16


# --- ClickHouse ---------------------------------------------------------------------------------------


def test_clickhouse_url_is_accepted_by_open_store(services: dict[str, Any], tmp_path: Path) -> None:
    clickhouse = service_env(services["clickhouse"])
    urls = {service_env(services[name])["RW_CLICKHOUSE__URL"] for name in ("worker", "api")}
    assert len(urls) == 1, f"worker and api use different ClickHouse URLs: {urls}"
    (url,) = urls
    store = open_store(url, tmp_path)  # ServerStore connects lazily: nothing is contacted here
    try:
        assert isinstance(store, ServerStore)
        assert (store.host, store.port) == ("clickhouse", 9000)
        assert store.database == clickhouse["CLICKHOUSE_DB"] == "recallwatch"
        assert store.user == clickhouse.get("CLICKHOUSE_USER", "default")
        assert urlsplit(url).password == clickhouse.get("CLICKHOUSE_PASSWORD")
    finally:
        store.close()
    assert any(str(p).split(":")[-1] == "9000" for p in services["clickhouse"].get("ports", []))


# --- Grafana ------------------------------------------------------------------------------------------


def test_grafana_mounts_and_plugin(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert "grafana-clickhouse-datasource" in service_env(grafana)["GF_INSTALL_PLUGINS"].split(",")
    mounts = {}
    for volume in grafana["volumes"]:
        source, target, *_ = str(volume).split(":")
        mounts[target] = source
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    provider = yaml.safe_load(DASHBOARD_PROVIDER_FILE.read_text())
    (dashboards,) = provider["providers"]
    path = dashboards["options"]["path"]
    assert path in mounts, f"dashboards provider reads {path}, which compose does not mount"
    assert (ROOT / mounts[path]).resolve() == DASHBOARD_FILE.parent


def test_grafana_datasource_points_at_the_app_database(
    services: dict[str, Any], datasource: dict[str, Any], tmp_path: Path
) -> None:
    assert datasource["type"] == "grafana-clickhouse-datasource"
    data = datasource["jsonData"]
    assert data["protocol"] == "native"
    store = open_store(service_env(services["worker"])["RW_CLICKHOUSE__URL"], tmp_path)
    try:
        assert isinstance(store, ServerStore)
        assert (data["host"], int(data["port"]), data["defaultDatabase"], data["username"]) == (
            store.host,
            store.port,
            store.database,
            store.user,
        )
    finally:
        store.close()
    # The password comes from Grafana's environment ($VAR is expanded in provisioning files).
    password_ref = str(datasource["secureJsonData"]["password"])
    var = password_ref.lstrip("$").strip("{}")
    assert password_ref.startswith("$") and var in service_env(services["grafana"])
    assert service_env(services["grafana"])[var] == service_env(services["clickhouse"])["CLICKHOUSE_PASSWORD"]


def dashboard_targets(dashboard: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target))
    return out


_FROM_TABLE = re.compile(r"\b(?:FROM|JOIN)\s+(`?[A-Za-z_][\w.`]*)", re.IGNORECASE)


def sql_tables(sql: str) -> set[str]:
    """Tables named after FROM/JOIN, without quotes or a ``recallwatch.`` database prefix."""
    names = set()
    for raw in _FROM_TABLE.findall(sql):
        name = raw.replace("`", "")
        database, _, table = name.rpartition(".")
        assert database in ("", "recallwatch"), f"query reads database {database!r}: {sql}"
        names.add(table)
    return names


def test_sql_tables_finds_tables() -> None:
    assert sql_tables("SELECT a FROM `events` FINAL JOIN recallwatch.alerts USING x") == {"events", "alerts"}
    assert sql_tables("SELECT toStartOfDay(x) FROM (SELECT 1)") == set()


def test_dashboard_queries_name_only_schema_tables(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    targets = dashboard_targets(dashboard)
    assert targets, "the dashboard has no queries"
    used: set[str] = set()
    for title, target in targets:
        assert target["datasource"]["uid"] == datasource["uid"], f"{title}: not the provisioned datasource"
        tables = sql_tables(target["rawSql"])
        assert tables, f"{title}: no table in {target['rawSql']!r}"
        assert tables <= set(TABLES), f"{title}: {sorted(tables - set(TABLES))} not in sinks.schema.TABLES"
        used |= tables
    assert {"events", "alerts", "rejects"} <= used
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]


def expand_grafana_macros(sql: str) -> str:
    """The ClickHouse plugin's macros, as literal SQL over a wide time range."""
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        r"\1 >= toDateTime(0) AND \1 <= toDateTime(4102444800)",
        sql,
    )
    sql = re.sub(r"\$__timeInterval\(([^)]+)\)", r"toStartOfInterval(\1, INTERVAL 86400 second)", sql)
    assert "$" not in sql, f"unexpanded Grafana macro or variable in {sql!r}"
    return sql


def test_dashboard_queries_run_against_the_schema(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Every panel's SQL runs on a migrated embedded store, so column names and types match sinks.schema."""
    targets = dashboard_targets(dashboard)
    store = open_store(None, tmp_path / "chdb")
    try:
        store.migrate()
        t0 = 1_735_689_600  # 2025-01-01, where the simulator starts
        store.insert("events", [{"event_id": "e1", "kind": "claim", "occurred_at": t0 + 3600, "model": "M1"}])
        store.insert("alerts", [{"alert_id": "a1", "opened_at": t0, "model": "M1", "batch": "B1"}])
        store.insert("rejects", [{"reject_id": "r1", "reason": "bad json", "rejected_at": t0}])
        results = {title: store.query(expand_grafana_macros(t["rawSql"])) for title, t in targets}
    finally:
        store.close()
    for title, rows in results.items():
        assert rows, f"{title}: query returned no rows for sample data"
    by_table = {next(iter(sql_tables(t["rawSql"]))): results[title] for title, t in targets}
    bucket = by_table["events"][0]["time"]  # the day holding the event (in the server's time zone)
    assert t0 + 3600 - 86_400 < bucket <= t0 + 3600 and by_table["events"][0]["events"] == 1
    assert by_table["rejects"] == [{"rejects": 1}]
    assert by_table["alerts"][0]["alert_id"] == "a1"


def test_timeseries_panels_return_a_time_column(dashboard: dict[str, Any]) -> None:
    for panel in dashboard["panels"]:
        if panel["type"] != "timeseries":
            continue
        for target in panel["targets"]:
            assert target["format"] == 0 and target["queryType"] == "timeseries"
            assert re.search(r"\bAS\s+time\b", target["rawSql"], re.IGNORECASE), panel["title"]


# --- healthchecks that run Python in the app image ----------------------------------------------------


def test_healthcheck_python_compiles(services: dict[str, Any]) -> None:
    for name in ("worker", "api"):
        compile(healthcheck_python(services[name]), f"<{name} healthcheck>", "exec")
    assert "http://127.0.0.1:8000/health" in healthcheck_python(services["api"])
    api_env = service_env(services["api"])
    assert api_env.get("RW_API__PORT", "8000") == "8000"
    assert "8000:8000" in [str(p) for p in services["api"]["ports"]]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_worker_healthcheck_finds_the_worker_but_not_itself(services: dict[str, Any]) -> None:
    code = healthcheck_python(services["worker"])
    pattern = 'b"recallwatch\\0worker\\0"'
    assert pattern in code, "the worker healthcheck changed: update this test"
    token = f"rwhc{uuid.uuid4().hex}"  # a name no other process on this machine has
    probe = code.replace(pattern, f'b"{token}\\0worker\\0"')

    def run_check() -> int:
        return subprocess.run([sys.executable, "-c", probe], timeout=30, check=False).returncode

    assert run_check() == 1, "the healthcheck matched its own command line"
    # A stand-in for `/usr/local/bin/python /usr/local/bin/recallwatch worker`.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token, "worker"])
    try:
        assert run_check() == 0, "the healthcheck did not find a running worker"
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


# --- Dockerfile ---------------------------------------------------------------------------------------


def test_dockerfile_builds_the_project_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    froms = [args for k, args in instructions if k == "FROM"]
    assert froms and froms[-1].split()[0] == "python:3.11-slim"

    entrypoints = [args for k, args in instructions if k == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["recallwatch"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "recallwatch" in pyproject["project"]["scripts"]

    runs = " ".join(args for k, args in instructions if k == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), "the image must `pip install .`"

    users = [args for k, args in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must end as a non-root user"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), "USER before a RUN"

    # Every package setuptools installs must be copied into the build context.
    copied = set()
    for k, args in instructions:
        if k == "COPY":
            copied.update(Path(src).name for src in args.split()[:-1] if not src.startswith("--"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml"} <= copied, f"not copied: {sorted(packages - copied)}"
