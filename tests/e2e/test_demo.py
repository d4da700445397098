"""The commands a newcomer runs: ``recallwatch demo`` and ``recallwatch run``, as real processes.

The clean five-minute demo starts when this module does and runs beside the other tests here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.e2e.processes import cli_env, start_cli, stop
from tests.slack_fake import SlackFake

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
CLEAN_SECONDS = 300


def demo_env(tmp: Path, **extra: str) -> dict[str, str]:
    port = free_port()
    return cli_env(
        RW_API__PORT=str(port),
        RW_API__PUBLIC_URL=f"http://127.0.0.1:{port}",
        RW_CLICKHOUSE__DATA_DIR=str(tmp / "clickhouse"),
        RW_WORKER__DATA_DIR=str(tmp / "worker"),
        **extra,
    )


@pytest.fixture(scope="module")
def clean_demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean-demo")
    with open(tmp / "summary.json", "wb") as out, open(tmp / "demo.log", "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recallwatch.cli",
                "demo",
                "--no-defect",
                "--seconds",
                str(CLEAN_SECONDS),
                "--json",
            ],
            env=demo_env(tmp),
            cwd=tmp,
            stdout=out,
            stderr=log,
        )
    yield process, tmp
    stop(process)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_demo_alerts_on_the_injected_defect_soon_after_onset(tmp_path, clean_demo):
    with SlackFake(token="xoxb-demo") as slack:
        env = demo_env(tmp_path, RW_SLACK__TOKEN="xoxb-demo", RW_SLACK__BASE_URL=slack.base_url)
        process = subprocess.Popen(
            [sys.executable, "-m", "recallwatch.cli", "demo", "--seconds", "45", "--json"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # While it runs, the API answers in the same process.
            api = env["RW_API__PUBLIC_URL"]
            deadline = time.monotonic() + 30
            health = None
            while health is None and time.monotonic() < deadline:
                try:
                    health = get_json(f"{api}/health")
                except OSError:
                    time.sleep(0.5)
            assert health and health["clickhouse"] == "chdb"
            stdout, stderr = process.communicate(timeout=120)
        finally:
            stop(process)
        assert process.returncode == 0, stderr.decode()[-3000:]
        summary = json.loads(stdout)
        assert "produced" in stderr.decode()  # progress was shown
        assert summary["events_produced"] > 3000
        assert summary["events_processed"] == summary["events_produced"]
        assert summary["clickhouse_rows"]["events"] == summary["events_produced"]
        assert summary["clickhouse_rows"]["rates"] > 0
        alerts = summary["alerts"]
        assert alerts, "the injected defect was not detected"
        assert all(a["matches_injected"] for a in alerts)
        first = alerts[0]
        assert {"model", "batch", "failure_mode", "opened_at", "delay_s", "matches_injected"} <= first.keys()
        assert (first["model"], first["batch"]) == ("KT-200", "KT-200-B04")
        assert 0 < first["delay_s"] <= 60
        assert summary["clickhouse_rows"]["alerts"] == len(alerts)
        # Each alert is on a case: the first of a case posts the thread root, later ones reply in it.
        posted = [c for c in slack.delivered if c.method == "chat.postMessage"]
        assert len(posted) == len(alerts) and all(a["delivered_via"] != "console" for a in alerts)
        assert posted[0].body["blocks"][0]["text"]["text"].startswith("KT-200 batch KT-200-B04")


def test_run_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    env = demo_env(tmp_path)
    process = start_cli(["run", "--simulate"], env, tmp_path, tmp_path / "run.log")
    try:
        api = env["RW_API__PUBLIC_URL"]
        deadline = time.monotonic() + 60
        rows = 0
        while time.monotonic() < deadline and rows == 0:
            with contextlib.suppress(OSError):
                rows = get_json(f"{api}/v1/stats")["clickhouse_rows"]["events"]
            time.sleep(0.5)
        assert rows > 0, (tmp_path / "run.log").read_text()[-3000:]
        children = child_pids(process.pid)
        assert children, "the embedded broker should be a child process"
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        time.sleep(0.5)
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and not is_zombie(pid)]
    finally:
        stop(process)


def test_clean_five_minute_demo_opens_no_alert(clean_demo):
    process, tmp = clean_demo
    process.wait(timeout=CLEAN_SECONDS + 120)
    assert process.returncode == 0, (tmp / "demo.log").read_text()[-3000:]
    summary = json.loads((tmp / "summary.json").read_text())
    assert summary["events_processed"] == summary["events_produced"] > 50_000
    assert summary["alerts"] == []


def child_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def is_zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
