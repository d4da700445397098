"""Property tests of every decoder that turns Kafka bytes into what the worker's agents act on.

The rule they hold: bad input gets a clear error and loses nothing. Whatever the bytes, a decoder
returns a valid record or a rejection with a non-empty reason (never raises), a valid record
round-trips, and anything accepted keeps the documented invariants. Pure: no broker, no ClickHouse.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cases.commands import HANDLERS, Command
from core.alerts import Alert
from core.config import DetectionConfig
from recallwatch.case_bus import command_message
from registry.tabular import MAX_EPOCH, MIN_EPOCH
from registry.units import CONTROL_CHARS, MAX_TEXT
from streams.case_agents import decode_case_event, decode_case_input
from streams.processing import RawRecord, process_batch
from streams.records import (
    MAX_TIME,
    MIN_TIME,
    NAME,
    Event,
    EventFields,
    Rejection,
    decode_event,
    decode_fields,
    encode_event,
)
from streams.registry_events import (
    KIND_FIELDS,
    KIND_TIME,
    RegistryEvent,
    decode_registry_event,
    registry_batch,
)

# More examples than the profile's default (this file is cheap), and all of them when it asks for more.
FAST = settings(max_examples=max(300, settings.default.max_examples))
BATCHES = settings(max_examples=max(60, settings.default.max_examples // 4))

CONTROL = f"[{CONTROL_CHARS}]"

# --- building blocks ------------------------------------------------------------------------------------

OFFSETS = st.sampled_from(
    [UTC, *(timezone(timedelta(minutes=m)) for m in (-14 * 60, -330, -60, 60, 345, 14 * 60))]
)
NAMES = st.text(
    st.characters(codec="utf-8", exclude_characters="|", exclude_categories=("Cc",)), min_size=1, max_size=128
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Values a producer bug or a hostile client may put in any field: every decoder meets each of them
# in each field (``every_field_with_every_nasty_value``), and Hypothesis mixes them with its own.
NASTY_VALUES: list[Any] = [

            None, True, False, 0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, 1e308, -1e308, -0.0, 0.5, 5.0,
            "", " ", "x" * 10_000, "\x00", "a\nb", "a|b", "\x1f", "\x7f", "☃", "\U0001f525", "\u202e",
            "nan", "NaN", "inf", "-Infinity", "1e400", "5", "true",
            "2025-03-01T10:00:00", "2025-03-01 10:00:00", "2025-03-01", "2025-02-30T10:00:00Z",
            "2025-03-01T24:00:00Z", "1989-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "3025-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
            "٢٠٢٥-03-01T10:00:00Z", 1740823200, 1740823200.5, -1740823200, 10**12, 1e20,
            [], {}, [1, 2], {"a": 1}, {"crash": "yes"},
]  # fmt: skip
NASTY = st.one_of(st.sampled_from(NASTY_VALUES), JSON_VALUES)
# JSON text a generic encoder cannot write but a producer can send: it replaces one field's value.
RAW_VALUE_LIST = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"123456789012345678901234567890",
     b"-123456789012345678901234567890", b'"\\ud800"', b'"\\udfff\\ud800"', b'"a\\u0000b"', b"01",
     b"1.", b"true", b'"\xff"', b"{", b""]  # fmt: skip
RAW_VALUES = st.sampled_from(RAW_VALUE_LIST)
PLACEHOLDER = "\x00__value__\x00"


def check_rejection(result: Any, payload: bytes | None) -> None:
    assert isinstance(result, Rejection), result
    assert isinstance(result.reason, str) and result.reason.strip()
    assert result.payload == (payload or b"")  # the dead-letter topic gets the message as it came


def every_field_with_every_nasty_value(data: dict[str, Any], extra: list[str]) -> list[bytes]:
    """``data`` with each field, nested ones too, in turn dropped or set to each nasty value."""
    out = []
    targets = [(data, name) for name in [*data, *extra]]
    targets += [(v, name) for v in data.values() if isinstance(v, dict) for name in [*v, "surprise"]]
    for target, name in targets:
        original = target.get(name, PLACEHOLDER)
        target.pop(name, None)
        out.append(orjson.dumps(data))
        for value in NASTY_VALUES:
            target[name] = value
            out.append(orjson.dumps(data))
        target[name] = PLACEHOLDER
        text = orjson.dumps(data)
        out += [text.replace(orjson.dumps(PLACEHOLDER), raw) for raw in RAW_VALUE_LIST]
        if original is PLACEHOLDER:
            del target[name]
        else:
            target[name] = original
    return out


def mutate(draw: st.DrawFn, data: dict[str, Any], extra: list[str]) -> bytes:
    """``data`` with one field (or one field of a nested object) changed, dropped or added."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    target = data
    names = sorted(data) + extra
    nested = [k for k, v in data.items() if isinstance(v, dict) and v]
    if nested and draw(st.booleans()):
        target = data[draw(st.sampled_from(nested))]
        names = [*sorted(target), "surprise"]
    name = draw(st.sampled_from(names))
    how = draw(st.sampled_from(["value", "value", "drop", "raw"]))
    if how == "drop":
        target.pop(name, None)
        return orjson.dumps(data)
    if how == "raw":
        target[name] = PLACEHOLDER
        text = orjson.dumps(data)
        return text.replace(orjson.dumps(PLACEHOLDER), draw(RAW_VALUES))
    target[name] = draw(NASTY)
    return orjson.dumps(data)


# --- rw.events: complaint, repair, return, shipment, population -----------------------------------------


@st.composite
def event_dicts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["complaint", "repair", "return", "shipment", "population"]))
    at = draw(st.datetimes(datetime(1990, 1, 2), datetime(2099, 12, 30), timezones=OFFSETS))
    out: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=200)),
        "kind": kind,
        "occurred_at": at.isoformat(),
        "model": draw(NAMES),
        "batch": draw(NAMES),
    }
    if kind in ("complaint", "repair", "return"):
        out["failure_mode"] = draw(st.text(min_size=1, max_size=128))
    if kind in ("shipment", "population") or draw(st.booleans()):
        out["units"] = draw(st.integers(1 if kind == "shipment" else 0, 10_000_000))
    if draw(st.booleans()):
        out["serial"] = draw(st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=128))
    for name, size in (("component", 128), ("region", 64)):
        if draw(st.booleans()):
            out[name] = draw(st.text(max_size=size))
    if draw(st.booleans()):
        out["severity"] = draw(
            st.fixed_dictionaries({}, optional=dict.fromkeys(("crash", "fire", "injury"), st.booleans()))
        )
    return out


EVENT_EXTRA = ["surprise", "Kind", "units_in_field"]


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    return mutate(draw, draw(event_dicts()), EVENT_EXTRA)


ANY_EVENT_PAYLOAD = st.one_of(
    st.none(),
    st.binary(max_size=200),
    JSON_VALUES.map(orjson.dumps),
    mutated_events(),
    event_dicts().map(orjson.dumps),
)


def check_event(event: Event) -> None:
    """The invariants an accepted event keeps (records.py, docs/architecture of the event topic)."""
    assert 1 <= len(event.event_id) <= 200
    assert event.kind in ("complaint", "repair", "return", "shipment", "population")
    assert event.occurred_at.tzinfo is not None and event.occurred_at.utcoffset() is not None
    assert MIN_TIME <= event.occurred_at < MAX_TIME
    for name in (event.model, event.batch):  # topic key model|batch must split back into the two
        assert re.fullmatch(NAME[1:-1], name) and "|" not in name
    assert type(event.units) is int and 0 <= event.units <= 10_000_000
    if event.kind == "shipment":
        assert event.units > 0
    elif event.kind != "population":
        assert event.failure_mode
    assert all(type(getattr(event.severity, f)) is bool for f in ("crash", "fire", "injury"))
    assert not re.search(CONTROL, event.serial)
    assert len(event.serial) <= 128 and len(event.component) <= 128 and len(event.failure_mode) <= 128
    assert len(event.region) <= 64


@FAST
@given(ANY_EVENT_PAYLOAD)
def test_event_decoders_accept_a_valid_event_or_reject_with_a_reason(payload):
    decoded = decode_event(payload)
    fast = decode_fields(payload)
    if isinstance(decoded, Rejection):
        check_rejection(decoded, payload)
        check_rejection(fast, payload)
        assert fast.reason == decoded.reason
    else:
        check_event(decoded)
        assert fast == EventFields.of(decoded)
        assert 0 <= fast.occurred_ts < 2**32  # the events table stores it as UInt32 epoch seconds


@FAST
@given(event_dicts())
def test_a_valid_event_round_trips(data):
    event = decode_event(orjson.dumps(data))
    assert isinstance(event, Event), event
    check_event(event)
    assert decode_event(encode_event(event)) == event
    assert decode_fields(encode_event(event)) == decode_fields(orjson.dumps(data)) == EventFields.of(event)


def test_booleans_are_not_counts():
    shipment = {"event_id": "e", "kind": "shipment", "occurred_at": "2025-03-01T10:00:00Z", "model": "M",
                "batch": "B", "units": True}  # fmt: skip
    for decode in (decode_event, decode_fields):
        result = decode(orjson.dumps(shipment))
        assert isinstance(result, Rejection) and "units" in result.reason


def cell_key_of(payload: bytes | None) -> bytes | None:
    """The key a producer following the rules sends a payload under: its model|batch, if it has one."""
    try:
        data = orjson.loads(payload or b"")
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("model"), str) and isinstance(data.get("batch"), str):
        return f"{data['model']}|{data['batch']}".encode()
    return None


@BATCHES
@given(st.lists(ANY_EVENT_PAYLOAD, max_size=20))
def test_a_batch_loses_nothing_every_record_is_a_row_or_a_reject(values):
    """The ingest agent's own path: a record becomes an events row or a dead letter plus a rejects row."""
    records = [RawRecord(1, i, 0.0, v, cell_key_of(v)) for i, v in enumerate(values)]
    result = process_batch(records, {}, DetectionConfig(), "rw.events", now=1_700_000_000.0)
    rows = {row[-2] for row in result.event_rows}  # src_offset
    dead = {record.offset for record, _ in result.dead_letters}
    assert rows | dead == set(range(len(values))) and not rows & dead
    assert sorted(r["offset"] for r in result.reject_rows) == sorted(dead)
    assert all(reason.strip() for _, reason in result.dead_letters)


# --- rw.registry: production, shipment, sale, ownership -------------------------------------------------

REGISTRY_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="|;=", min_codepoint=0x21), min_size=1, max_size=30
)


@st.composite
def registry_dicts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(KIND_FIELDS)))
    at = draw(st.datetimes(datetime(1990, 1, 2), datetime(2099, 12, 30), timezones=OFFSETS))
    out: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=200)),
        "kind": kind,
        "serial": draw(REGISTRY_TEXT),
        "occurred_at": at.isoformat(),
    }
    for name in draw(st.lists(st.sampled_from(KIND_FIELDS[kind]), unique=True)):
        if name == "supplier_lots":
            out[name] = draw(st.dictionaries(REGISTRY_TEXT, REGISTRY_TEXT, max_size=3))
        elif name == "contact_consent":
            out[name] = draw(st.booleans())
        elif name == "customer_phone":
            out[name] = draw(st.from_regex(r"\A\+?[0-9][0-9 ]{4,20}\Z"))
        elif name == "customer_email":
            out[name] = draw(st.sampled_from(["a@b.co", "ana.lima@example.com"]))
        else:
            out[name] = draw(REGISTRY_TEXT)
    return out


REGISTRY_EXTRA = ["surprise", "model", "channel", "sold_at", "contact_consent", "supplier_lots"]


@st.composite
def mutated_registry(draw: st.DrawFn) -> bytes:
    return mutate(draw, draw(registry_dicts()), REGISTRY_EXTRA)


ANY_REGISTRY_PAYLOAD = st.one_of(
    st.none(),
    st.binary(max_size=200),
    JSON_VALUES.map(orjson.dumps),
    mutated_registry(),
    registry_dicts().map(orjson.dumps),
)


def check_registry_event(event: RegistryEvent) -> None:
    assert 1 <= len(event.event_id) <= 200 and 1 <= len(event.serial) <= 128
    assert event.occurred_at.tzinfo is not None and event.occurred_at.utcoffset() is not None
    given_fields = event.given()
    time_field = KIND_TIME[event.kind]
    assert set(given_fields) <= set(KIND_FIELDS[event.kind]) | {time_field}
    assert all(type(v) is str for v in given_fields.values())


@FAST
@given(ANY_REGISTRY_PAYLOAD)
def test_registry_decoder_accepts_a_valid_event_or_gives_a_reason(payload):
    decoded = decode_registry_event(payload)
    if isinstance(decoded, str):
        assert decoded.strip()
    else:
        check_registry_event(decoded)


@FAST
@given(registry_dicts())
def test_a_valid_registry_event_round_trips(data):
    event = decode_registry_event(orjson.dumps(data))
    assert isinstance(event, RegistryEvent), event
    again = decode_registry_event(orjson.dumps(event.model_dump(mode="json", exclude_unset=True)))
    assert again == event and again.given() == event.given()


@BATCHES
@given(st.lists(ANY_REGISTRY_PAYLOAD, max_size=12))
def test_a_registry_batch_loses_nothing_and_keeps_the_column_rules(values):
    """The registry agent's decode-and-check step: each record is in one run or in the rejects."""
    records = [RawRecord(0, i, 0.0, v) for i, v in enumerate(values)]
    batch = registry_batch(records)
    kept = [line for run in batch.runs for line in run.rows.column("source_line").to_pylist()]
    refused = [record.offset for record, _ in batch.rejects]
    assert sorted(kept + refused) == list(range(len(values)))
    assert all(reason.strip() for _, reason in batch.rejects)
    for run in batch.runs:
        rows = run.rows.to_pylist()
        for row in rows:
            assert row["serial"] and len(row["serial"]) <= MAX_TEXT
            assert not re.search(CONTROL, row["serial"])
            for name in ("model", "batch"):
                assert "|" not in row.get(name, "") and not re.search(CONTROL, row.get(name, ""))
            for name in KIND_TIME.values():
                if name and name in row:
                    assert MIN_EPOCH <= row[name] < MAX_EPOCH
    assert batch.shipment_offsets <= set(range(len(values)))


def test_supplier_lots_that_would_read_back_as_other_lots_are_refused():
    base = {"event_id": "e", "kind": "production", "serial": "S1", "occurred_at": "2024-01-01T00:00:00Z"}
    for lots in ({"battery": "B-1;motor=L-77"}, {"battery=x": "B-1"}, {"a;b": "c"}):
        reason = decode_registry_event(orjson.dumps({**base, "supplier_lots": lots}))
        assert isinstance(reason, str) and "supplier_lots" in reason


def test_times_that_overflow_in_utc_are_refused_not_raised():
    base = {"event_id": "e", "kind": "production", "serial": "S1", "model": "M", "batch": "B"}
    for at in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        payload = orjson.dumps({**base, "occurred_at": at})
        reason = decode_registry_event(payload)
        assert isinstance(reason, str) and "occurred_at" in reason
        assert len(registry_batch([RawRecord(0, 7, 0.0, payload)]).rejects) == 1


# --- rw.alerts: detector alerts and case commands; rw.case-events ---------------------------------------

FINITE = st.floats(allow_nan=False, allow_infinity=False)
ALERTS = st.builds(
    Alert,
    alert_id=st.text(min_size=1, max_size=30),
    model=NAMES,
    batch=NAMES,
    failure_mode=st.text(min_size=1, max_size=30),
    opened_at=FINITE,
    detector=st.text(max_size=20),
    detector_params=st.dictionaries(st.text(max_size=10), JSON_SCALARS, max_size=3),
    config_version=st.text(max_size=20),
    score=FINITE,
    count=st.integers(0, 2**31),
    expected=FINITE,
    units_in_field=st.integers(0, 2**40),
    rate_per_1000=FINITE,
    expected_rate_per_1000=FINITE,
    window_s=st.integers(0, 2**31),
    trigger_event_id=st.text(max_size=20),
    trigger_produced_at=FINITE,
    detectors_fired=st.lists(st.text(max_size=10), max_size=3).map(tuple),
)
COMMANDS = st.builds(
    Command,
    command_id=st.text(max_size=30),
    case_id=st.text(max_size=30),
    kind=st.sampled_from(sorted(HANDLERS)),
    actor=st.text(max_size=20),
    at=FINITE,
    reason=st.text(max_size=30),
    args=st.dictionaries(st.text(max_size=10), JSON_SCALARS, max_size=3),
)


@st.composite
def mutated_case_inputs(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return mutate(draw, draw(ALERTS).to_dict(), ["surprise", "type"])
    message = orjson.loads(command_message(draw(COMMANDS)))
    return mutate(draw, message, ["surprise"])


ALERT_TYPES = {"str": (str,), "float": (int, float), "int": (int,)}


@FAST
@given(st.one_of(st.none(), st.binary(max_size=200), JSON_VALUES.map(orjson.dumps), mutated_case_inputs()))
def test_case_inputs_decode_or_are_rejected_with_a_reason(payload):
    decoded = decode_case_input(payload)
    if isinstance(decoded, Rejection):
        check_rejection(decoded, payload)
    elif isinstance(decoded, Command):
        assert decoded.kind in HANDLERS and math.isfinite(decoded.at)
        assert all(
            type(v) is str for v in (decoded.command_id, decoded.case_id, decoded.actor, decoded.reason)
        )
    else:
        assert isinstance(decoded, Alert)
        for f in fields(decoded):
            value, wanted = getattr(decoded, f.name), ALERT_TYPES.get(str(f.type))
            assert wanted is None or (isinstance(value, wanted) and not isinstance(value, bool)), f.name
        assert isinstance(decoded.detector_params, dict)
        assert all(type(d) is str for d in decoded.detectors_fired)


@FAST
@given(st.one_of(ALERTS, COMMANDS))
def test_alerts_and_commands_round_trip(item):
    payload = command_message(item) if isinstance(item, Command) else orjson.dumps(item.to_dict())
    assert decode_case_input(payload) == item


def test_commands_at_no_time_and_badly_typed_alerts_are_rejected():
    cmd = orjson.loads(command_message(Command("c1", "case-1", "acknowledge", "ana", 1.0, "seen")))
    cmd["command"]["at"] = "nan"
    assert isinstance(decode_case_input(orjson.dumps(cmd)), Rejection)
    alert = {f.name: 1 for f in fields(Alert)} | {"detector_params": {}, "detectors_fired": []}
    assert isinstance(decode_case_input(orjson.dumps(alert)), Rejection)  # ids as numbers
    alert |= {n: "x" for n in ("alert_id", "model", "batch", "failure_mode", "detector", "config_version",
                               "trigger_event_id")}  # fmt: skip
    assert isinstance(decode_case_input(orjson.dumps(alert)), Alert)
    assert isinstance(decode_case_input(orjson.dumps(alert | {"count": True})), Rejection)


CASE_EVENTS = st.fixed_dictionaries(
    {
        "event": st.fixed_dictionaries(
            {
                "case_id": st.text(max_size=20),
                "seq": st.integers(1, 10**6),
                "at": FINITE,
                "actor": st.text(max_size=10),
                "action": st.sampled_from(["open", "evidence", "mute", "acknowledge"]),
                "from_state": st.text(max_size=10),
                "to_state": st.text(max_size=10),
                "reason": st.text(max_size=20),
                "data": st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3),
            }
        ),
        "case": st.none() | st.dictionaries(st.text(max_size=10), JSON_SCALARS, max_size=3),
    }
)


@st.composite
def mutated_case_events(draw: st.DrawFn) -> bytes:
    return mutate(draw, draw(CASE_EVENTS), ["surprise"])


@FAST
@given(st.one_of(st.none(), st.binary(max_size=200), JSON_VALUES.map(orjson.dumps), mutated_case_events()))
def test_case_events_decode_or_are_rejected_with_a_reason(payload):
    decoded = decode_case_event(payload)
    if isinstance(decoded, Rejection):
        check_rejection(decoded, payload)
        return
    case_id, seq, event, case = decoded
    assert type(case_id) is str and type(seq) is int
    assert type(event["action"]) is str and isinstance(event.get("data") or {}, dict)
    assert isinstance(event.get("reason", ""), str)
    assert case is None or isinstance(case, dict)


@FAST
@given(CASE_EVENTS)
def test_case_events_round_trip(message):
    event = message["event"]
    assert decode_case_event(orjson.dumps(message)) == (
        event["case_id"],
        event["seq"],
        event,
        message["case"],
    )


def test_a_case_event_without_an_action_is_rejected_not_a_crash():
    message = {"event": {"case_id": "c", "seq": 1}, "case": None}
    result = decode_case_event(orjson.dumps(message))
    assert isinstance(result, Rejection) and "action" in result.reason


# --- every listed nasty value in every field of every decoder's input -----------------------------------

EVENT_BASES = [
    {"event_id": "e1", "kind": kind, "occurred_at": "2025-03-01T10:00:00Z", "model": "KT-100", "batch": "B01",
     "serial": "S1", "failure_mode": "cord" if kind != "shipment" else "", "component": "c",
     "severity": {"crash": False, "fire": True, "injury": False}, "region": "EU", "units": 5}
    for kind in ("complaint", "shipment", "population")
]  # fmt: skip
REGISTRY_BASES = [
    {"event_id": "r1", "kind": "production", "serial": "KT-1", "occurred_at": "2024-03-12T08:30:00Z",
     "model": "KT-200", "batch": "B-2403", "line": "L2", "plant": "P", "supplier_lots": {"battery": "BAT-1"}},
    {"event_id": "r2", "kind": "shipment", "serial": "KT-1", "occurred_at": "2024-03-13T08:30:00+02:00",
     "channel": "retail", "distributor": "D", "retailer": "R", "store": "S", "region": "EU", "city": "Oslo"},
    {"event_id": "r3", "kind": "sale", "serial": "KT-1", "occurred_at": "2024-03-14T08:30:00Z", "store": "S",
     "customer_email": "a@b.co", "customer_phone": "+47 1234 5678", "contact_consent": True},
    {"event_id": "r4", "kind": "ownership", "serial": "KT-1", "occurred_at": "2024-03-15T08:30:00Z",
     "customer_id": "C1", "member_id": "M1", "contact_consent": False},
]  # fmt: skip


def test_event_decoders_on_every_field_with_every_nasty_value():
    payloads = [p for base in EVENT_BASES for p in every_field_with_every_nasty_value(base, EVENT_EXTRA)]
    records = [RawRecord(0, i, 0.0, p, cell_key_of(p)) for i, p in enumerate(payloads)]
    result = process_batch(records, {}, DetectionConfig(), "rw.events", now=1_700_000_000.0)
    assert len(result.event_rows) + len(result.dead_letters) == len(payloads)
    for payload in payloads:
        decoded, fast = decode_event(payload), decode_fields(payload)
        if isinstance(decoded, Rejection):
            check_rejection(decoded, payload)
            check_rejection(fast, payload)
        else:
            check_event(decoded)
            assert fast == EventFields.of(decoded)


def test_registry_decoder_on_every_field_with_every_nasty_value():
    payloads = [
        p for base in REGISTRY_BASES for p in every_field_with_every_nasty_value(base, REGISTRY_EXTRA)
    ]
    for payload in payloads:
        decoded = decode_registry_event(payload)
        if isinstance(decoded, str):
            assert decoded.strip()
        else:
            check_registry_event(decoded)
    batch = registry_batch([RawRecord(0, i, 0.0, p) for i, p in enumerate(payloads)])
    kept = [line for run in batch.runs for line in run.rows.column("source_line").to_pylist()]
    assert sorted(kept + [r.offset for r, _ in batch.rejects]) == list(range(len(payloads)))


def test_case_decoders_on_every_field_with_every_nasty_value():
    alert = Alert("a1", "M", "B", "cord", 1.0, "cusum", {"h": 4.0}, "v1", 5.0, 3, 1.0, 100, 30.0, 10.0, 86400)
    command = orjson.loads(command_message(Command("c1", "case-1", "acknowledge", "ana", 1.0, "seen")))
    inputs = every_field_with_every_nasty_value(alert.to_dict(), ["surprise", "type"])
    inputs += every_field_with_every_nasty_value(command, ["surprise"])
    for payload in inputs:
        decoded = decode_case_input(payload)
        assert not isinstance(decoded, Rejection) or decoded.reason.strip()
    event = {"case_id": "case-1", "seq": 2, "at": 1.0, "actor": "ana", "action": "evidence",
             "from_state": "open", "to_state": "open", "reason": "more",
             "data": {"alert": alert.to_dict()}}  # fmt: skip
    for payload in every_field_with_every_nasty_value({"event": event, "case": {"case_id": "case-1"}}, []):
        decoded_event = decode_case_event(payload)
        assert not isinstance(decoded_event, Rejection) or decoded_event.reason.strip()


# --- an event dated after it was sent ----------------------------------------------------------------


@FAST
@given(ANY_EVENT_PAYLOAD, st.floats(min_value=-1.0, max_value=MAX_TIME.timestamp() + 86_400 * 400))
def test_the_lead_check_gives_both_decoders_one_verdict_and_reason(payload, sent_at):
    fields, event = decode_fields(payload, sent_at, 86_400), decode_event(payload, sent_at, 86_400)
    if isinstance(fields, Rejection):
        assert isinstance(event, Rejection) and event.reason == fields.reason and fields.reason.strip()
    else:
        assert isinstance(event, Event) and EventFields.of(event) == fields
        assert sent_at <= 0 or fields.occurred_ts - sent_at <= 86_400


def _cell_with_a_defect(bad_event: bool) -> list[RawRecord]:
    """A quiet cell, then a burst of complaints; each record stamped as a live producer stamps it
    (sent a minute after the event happened). ``bad_event``: one complaint from a clock set to 2099,
    sent between the two."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    events: list[tuple[dict[str, Any], float]] = []

    def add(at: datetime, **fields: Any) -> None:
        body = {"model": "KT", "batch": "B1", "occurred_at": at.isoformat(), **fields}
        events.append((body, at.timestamp() + 60))

    add(t0, event_id="s", kind="shipment", units=20_000)
    for day in range(0, 120, 4):
        add(t0 + timedelta(days=day, hours=1), event_id=f"c{day}", kind="complaint", failure_mode="heating")
    if bad_event:  # sent when the last quiet-time complaint was
        sent = events[-1][1]
        add(datetime(2099, 6, 1, tzinfo=UTC), event_id="bad-clock", kind="complaint", failure_mode="heating")
        events[-1] = (events[-1][0], sent)
    for day in range(120, 150):
        for k in range(30):
            at = t0 + timedelta(days=day, minutes=k)
            add(at, event_id=f"d{day}-{k}", kind="complaint", failure_mode="heating")
    return [RawRecord(0, i, sent, orjson.dumps(body), b"KT|B1") for i, (body, sent) in enumerate(events)]


def test_an_event_dated_far_ahead_is_dead_lettered_and_the_cell_still_alerts():
    cfg = DetectionConfig(max_event_lead_s=86_400)
    clean = process_batch(_cell_with_a_defect(False), {}, cfg, "rw.events", now=1_800_000_000.0)
    records = _cell_with_a_defect(True)
    result = process_batch(records, {}, cfg, "rw.events", now=1_800_000_000.0)
    assert [(r.value, reason.split(":")[0]) for r, reason in result.dead_letters] == [
        (next(r.value for r in records if b"bad-clock" in (r.value or b"")), "occurred_at")
    ]
    assert [row["offset"] for row in result.reject_rows] == [result.dead_letters[0][0].offset]
    assert result.alerts and [a.alert_id for a in result.alerts] == [a.alert_id for a in clean.alerts]
    assert result.rate_rows == clean.rate_rows
    # A replay (later, by another worker's clock) rejects the same record for the same reason.
    again = process_batch(records, {}, cfg, "rw.events", now=1_900_000_000.0)
    assert again.dead_letters == result.dead_letters
