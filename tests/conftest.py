"""Shared fixtures: a fresh, migrated ClickHouse store on each back end, and the server behind it."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sinks.clickhouse import ClickHouseStore, open_store
from tests.clickhouse_server import running_clickhouse_server

SERVER_MARKS = [pytest.mark.server, pytest.mark.integration]

# Property tests draw the same examples on every run (a red CI run can be replayed, and a green one
# is not luck); no per-example deadline, because this shared machine's pauses are not our bugs.
# Set HYPOTHESIS_PROFILE=explore locally to draw new examples, many more of them.
settings.register_profile(
    "repeatable", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="session")
def clickhouse_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One clickhouse-server for the whole session (starting one takes a couple of seconds)."""
    if shutil.which("clickhouse-server") is None:
        reason = "clickhouse-server is not installed (apt-get install -y clickhouse-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the server tests")
        pytest.skip(reason)
    with running_clickhouse_server(tmp_path_factory.mktemp("clickhouse-server")) as url:
        yield url


@pytest.fixture
def server_url(clickhouse_server_url: str) -> str:
    """The session server with a database name of its own, so tests never see each other's rows."""
    base = clickhouse_server_url.rsplit("/", 1)[0]
    return f"{base}/t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["chdb", pytest.param("server", marks=SERVER_MARKS)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClickHouseStore]:
    if request.param == "chdb":
        s = open_store(None, tmp_path / "chdb")
    else:
        s = open_store(request.getfixturevalue("server_url"), tmp_path)
    s.migrate()
    try:
        yield s
    finally:
        if s.backend == "server":
            s.query(f"DROP DATABASE IF EXISTS {s.database}")  # type: ignore[attr-defined]
        s.close()
