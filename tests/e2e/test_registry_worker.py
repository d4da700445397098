"""Registry events on Kafka update the registry and feed the cells' denominators, end to end."""

from __future__ import annotations

import shutil
import time

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from sinks.clickhouse import ClickHouseError, ClickHouseUnavailable, open_store
from streams.broker import running_broker
from streams.producer import ensure_topics, make_producer
from tests.e2e.processes import cli_env, start_cli, stop

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.server]
TOPICS = ["rw.events", "rw.events.dlq", "rw.alerts", "rw.registry"]


def query(url: str, tmp, sql: str) -> list[dict]:
    store = open_store(url, tmp)
    try:
        return store.query(sql)
    except (ClickHouseError, ClickHouseUnavailable):
        return []
    finally:
        store.close()


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.5)


def registry_events() -> list[dict]:
    events = []
    for i in range(1, 31):
        batch = "B1" if i <= 20 else "B2"
        events.append(
            {
                "event_id": f"p{i}",
                "kind": "production",
                "serial": f"KT-{i:04d}",
                "occurred_at": "2025-01-01T00:00:00Z",
                "model": "KT",
                "batch": batch,
                "line": "L1",
                "plant": "P1",
                "supplier_lots": {"battery": f"LOT-{i // 10}"},
            }
        )
    for i in range(1, 26):  # 20 of B1 and 5 of B2 ship
        events.append(
            {
                "event_id": f"s{i}",
                "kind": "shipment",
                "serial": f"KT-{i:04d}",
                "occurred_at": "2025-01-10T00:00:00Z",
                "channel": "retail",
                "store": "S1",
                "region": "EU",
            }
        )
    events.append(
        {"event_id": "o1", "kind": "ownership", "serial": "KT-0003", "occurred_at": "2025-02-01T00:00:00Z",
         "customer_id": "C-1", "customer_email": "ann@example.com", "contact_consent": True}
    )  # fmt: skip
    return events


BAD = [
    b"{not json",
    orjson.dumps(
        {"event_id": "x1", "kind": "shipment", "serial": "ZZ-1", "occurred_at": "2025-01-10T00:00:00Z"}
    ),
    orjson.dumps(
        {
            "event_id": "x2",
            "kind": "shipment",
            "serial": "KT-0001",
            "occurred_at": "2025-01-10T00:00:00Z",
            "model": "X",
        }
    ),
]


def dead_letters(bootstrap: str, n: int, timeout: float = 60) -> list[tuple[bytes, dict[str, str]]]:
    """The first ``n`` messages on the dead-letter topic (all partitions): value and headers."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    try:
        partitions = [
            TopicPartition("rw.events.dlq", p) for p in consumer.partitions_for_topic("rw.events.dlq")
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        got: list[tuple[bytes, dict[str, str]]] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got += [(r.value, {k: v.decode() for k, v in r.headers}) for r in records]
        return got
    finally:
        consumer.close()


def test_registry_events_update_units_and_send_population_counts(tmp_path):
    if shutil.which("clickhouse-server") is None:
        pytest.skip("clickhouse-server is not installed")
    from tests.clickhouse_server import ServerProcess

    server = ServerProcess(tmp_path / "ch")
    server.start()
    url = server.url("registry")
    with running_broker() as broker:
        ensure_topics(broker.bootstrap, TOPICS, 2)
        env = cli_env(
            RW_KAFKA__URL=broker.url,
            RW_KAFKA__PARTITIONS="2",
            RW_CLICKHOUSE__URL=url,
            RW_WORKER__DATA_DIR=str(tmp_path / "w"),
        )
        worker = start_cli(["worker"], env, tmp_path, tmp_path / "worker.log")
        producer = make_producer(broker.bootstrap)
        try:
            for event in registry_events():
                producer.send("rw.registry", key=event["serial"].encode(), value=orjson.dumps(event))
            for raw in BAD:
                producer.send("rw.registry", key=b"bad", value=raw)
            sent = [  # the same bad message twice: two messages, two rejects
                producer.send("rw.alerts", key=b"case-x", value=b'{"alert_id": null}').get(timeout=30)
                for _ in range(2)
            ]
            bad_event = producer.send("rw.events", key=b"KT|B1", value=b'{"kind": "rumour"}').get(timeout=30)
            producer.flush()
            # Shipments and the ownership change land in separate merges (KT-0003's events follow one
            # another on its partition, but another partition may finish first): wait for both.
            sql = (
                "SELECT countIf(shipped_at > 0) AS n, countIf(customer_email != '') AS owned FROM units FINAL"
            )
            wait_for(
                lambda: (query(url, tmp_path, sql) or [{"n": 0, "owned": 0}])[0] == {"n": 25, "owned": 1}
            )
            units = query(
                url, tmp_path, "SELECT serial, batch, region, customer_email FROM units FINAL ORDER BY serial"
            )
            assert len(units) == 30
            assert [u["region"] for u in units] == ["EU"] * 25 + [""] * 5
            assert units[2]["customer_email"] == "ann@example.com" and units[2]["batch"] == "B1"

            reasons_sql = "SELECT reason FROM rejects FINAL WHERE topic = 'rw.registry' ORDER BY reason"
            wait_for(lambda: len(query(url, tmp_path, reasons_sql)) >= 3)
            reasons = [r["reason"] for r in query(url, tmp_path, reasons_sql)]
            assert len(reasons) == 3
            assert any("a shipment event cannot set model" in r for r in reasons)
            assert any("unknown serial" in r for r in reasons)
            assert any("not JSON" in r for r in reasons)
            # A message the case agents cannot read is kept under the topic and offset it came from.
            case_sql = (
                "SELECT `partition`, `offset`, reason FROM rejects FINAL WHERE topic = 'rw.alerts'"
                " ORDER BY `offset`"
            )
            wait_for(lambda: len(query(url, tmp_path, case_sql)) >= 2)
            kept = query(url, tmp_path, case_sql)
            assert [(r["partition"], r["offset"]) for r in kept] == [(m.partition, m.offset) for m in sent]
            assert all("neither an alert nor a case command" in r["reason"] for r in kept)
            # Every rejected message is also on the dead-letter topic, as it came, with why and where from.
            letters = dead_letters(broker.bootstrap, 6)
            by_source = {
                (h["src_topic"], int(h["src_partition"]), int(h["src_offset"])): (v, h) for v, h in letters
            }
            wanted = [("rw.alerts", m.partition, m.offset) for m in sent]
            wanted.append(("rw.events", bad_event.partition, bad_event.offset))
            assert set(wanted) <= set(by_source)
            assert (
                by_source[wanted[0]][0] == b'{"alert_id": null}'
                and by_source[wanted[-1]][0] == b'{"kind": "rumour"}'
            )
            registry_letters = sorted(
                v for (topic, _, _), (v, _) in by_source.items() if topic == "rw.registry"
            )
            assert registry_letters == sorted(BAD)
            assert all(h["reason"] for _, h in letters)

            pop_sql = (
                "SELECT batch, max(units) AS n FROM events FINAL WHERE kind = 'population'"
                " GROUP BY batch ORDER BY batch"
            )
            wait_for(lambda: [r["n"] for r in query(url, tmp_path, pop_sql)] == [20, 5])
            assert query(url, tmp_path, pop_sql) == [{"batch": "B1", "n": 20}, {"batch": "B2", "n": 5}]

            # A shipment recorded late, dated before the cell's latest one, adds a unit: the count
            # sent is every unit shipped up to the cell's latest shipment, not up to this one's date.
            late = {"event_id": "s26", "kind": "shipment", "serial": "KT-0026",
                    "occurred_at": "2025-01-05T00:00:00Z", "region": "EU"}  # fmt: skip
            producer.send("rw.registry", key=b"KT-0026", value=orjson.dumps(late))
            producer.flush()
            b2_sql = (
                "SELECT toUnixTimestamp(occurred_at) AS at, units FROM events FINAL"
                " WHERE kind = 'population' AND batch = 'B2' ORDER BY units DESC LIMIT 1"
            )
            wait_for(lambda: (query(url, tmp_path, b2_sql) or [{"units": 0}])[0]["units"] >= 6)
            assert query(url, tmp_path, b2_sql) == [{"at": 1_736_467_200, "units": 6}]  # 2025-01-10

            # A production event moving shipped units to another cell recounts both cells: KT-0001
            # leaves B1 for B2, and B3's only shipped unit leaves for B2 too, so B3 is counted 0
            # (dated at the shipment that left). Only shipments used to trigger a count.
            def production(i: int, serial: str, batch: str) -> dict:
                return {"event_id": f"m{i}", "kind": "production", "serial": serial,
                        "occurred_at": "2025-01-01T00:00:00Z", "model": "KT", "batch": batch}  # fmt: skip

            moves = [
                production(1, "KT-0031", "B3"),
                {
                    "event_id": "s31",
                    "kind": "shipment",
                    "serial": "KT-0031",
                    "occurred_at": "2025-01-10T00:00:00Z",
                    "region": "EU",
                },
                production(2, "KT-0001", "B2"),
                production(3, "KT-0031", "B2"),
            ]
            for event in moves:
                producer.send("rw.registry", key=event["serial"].encode(), value=orjson.dumps(event))
                producer.flush()
            counts_sql = "SELECT batch, units FROM events FINAL WHERE kind = 'population'"
            wanted_counts = {("B1", 19), ("B2", 8), ("B3", 0)}

            def counts() -> set[tuple[str, int]]:
                return {(r["batch"], r["units"]) for r in query(url, tmp_path, counts_sql)}

            wait_for(lambda: wanted_counts <= counts())
            assert wanted_counts <= counts()
            assert worker.poll() is None
        finally:
            producer.close()
            stop(worker)
            server.stop()
