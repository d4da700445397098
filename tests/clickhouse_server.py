"""Start Debian's clickhouse-server (18.16) as a throwaway child process for tests.

Every path and port the stock config would share with a system install is overridden, so several test
runs (and a real server) can coexist: data/tmp/user_files/format_schemas under ``tmp_dir``, and free ports
for the native, HTTP and interserver listeners.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

CONFIG = "/etc/clickhouse-server/config.xml"
START_TIMEOUT_S = 30.0


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is chosen so the same port is not handed out twice.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def server_command(data_dir: Path, tcp_port: int, http_port: int, interserver_port: int) -> list[str]:
    binary = shutil.which("clickhouse-server") or "clickhouse-server"
    d = str(data_dir)
    return [
        binary,
        f"--config-file={CONFIG}",
        "--",  # everything after this overrides config.xml keys
        f"--path={d}/",
        f"--tmp_path={d}/tmp/",
        f"--user_files_path={d}/user_files/",
        f"--format_schema_path={d}/format_schemas/",
        f"--tcp_port={tcp_port}",
        f"--http_port={http_port}",
        f"--interserver_http_port={interserver_port}",  # default 9009 would clash between runs
        "--listen_host=127.0.0.1",
        f"--logger.log={d}/log",
        f"--logger.errorlog={d}/err",
    ]


def _answers(port: int) -> bool:
    from clickhouse_driver import Client

    client = Client("127.0.0.1", port=port, connect_timeout=1, send_receive_timeout=5)
    try:
        return bool(client.execute("SELECT 1") == [(1,)])
    except Exception:
        return False
    finally:
        client.disconnect()


class ServerProcess:
    """One clickhouse-server on fixed ports and a data dir, which can be stopped and started again."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tcp_port, self.http_port, self.interserver_port = _free_ports(3)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"clickhouse://127.0.0.1:{self.tcp_port}/{database}"

    def start(self) -> None:
        cmd = server_command(self.data_dir, self.tcp_port, self.http_port, self.interserver_port)
        with open(self.data_dir / "stdout", "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.data_dir, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(self.tcp_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.data_dir / "err"
                tail = err.read_text(errors="replace")[-2000:] if err.exists() else ""
                raise RuntimeError(
                    f"clickhouse-server did not answer on port {self.tcp_port} "
                    f"(exit code {self.proc.poll()}): "
                    f"{' '.join(cmd)}\n{tail}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_clickhouse_server(tmp_dir: str | Path, database: str = "recallwatch_test") -> Iterator[str]:
    """Run a server until the block exits; yields ``clickhouse://127.0.0.1:PORT/<database>``."""
    server = ServerProcess(tmp_dir)
    try:
        server.start()
        yield server.url(database)
    finally:
        server.stop()
