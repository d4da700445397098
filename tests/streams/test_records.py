from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson
import pytest

from streams.records import (
    Event,
    EventFields,
    Rejection,
    cell_key,
    decode_event,
    decode_fields,
    encode_event,
    population_event,
)

GOOD = {
    "event_id": "e1",
    "kind": "complaint",
    "occurred_at": "2025-03-01T10:00:00Z",
    "model": "KT-100",
    "batch": "KT-100-B01",
    "failure_mode": "power_cord",
}


def test_a_good_event_round_trips():
    event = decode_event(orjson.dumps(GOOD))
    assert isinstance(event, Event)
    assert event.cell_key == cell_key("KT-100", "KT-100-B01") == "KT-100|KT-100-B01"
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": "rumour"}, "kind"),
        ({"occurred_at": "2025-03-01T10:00:00"}, "timezone"),
        ({"occurred_at": "3025-01-01T00:00:00Z"}, "1990..2100"),
        ({"failure_mode": ""}, "needs a failure_mode"),
        ({"failure_mode": "*"}, "reserved for all failure modes"),  # else counted twice in "*"
        ({"model": "a|b"}, "model"),
        ({"batch": ""}, "batch"),
        ({"surprise": 1}, "Extra inputs"),
        ({"kind": "shipment", "units": 0}, "units > 0"),
        ({"units": -5}, "units"),
        ({"serial": "SN\x7f1"}, "serial"),  # control characters: C0, DEL and C1
        ({"serial": "SN\u00851"}, "serial"),
        ({"model": "KT\u009f"}, "model"),
    ],
)
def test_invalid_events_are_rejected_with_the_reason(change, reason):
    result = decode_event(orjson.dumps({**GOOD, **change}))
    assert isinstance(result, Rejection)
    assert reason in result.reason


@pytest.mark.parametrize("payload", [None, b"", b"not json", b"[1,2]", b'"str"', b"\x00\xff"])
def test_garbage_is_rejected_not_raised(payload):
    assert isinstance(decode_event(payload), Rejection)


# --- the worker's fast decoder agrees with the model -------------------------------------------------

TIMES = [
    "2025-03-01T10:00:00Z", "2025-03-01T10:00:00+00:00", "2025-03-01T10:00:00.5Z",
    "2025-03-01T10:00:00.123456Z", "2025-03-01T10:00:00.1234567Z", "2025-03-01T10:00:00+02:00",
    "2025-03-01T10:00:00-05:30", "2025-03-01T10:00:00-00:00", "2025-03-01T10:00:00", "2025-03-01 10:00:00Z",
    "2025-02-30T10:00:00Z", "2025-03-01T24:00:00Z", "2025-03-01T23:59:60Z", "1989-12-31T23:59:59Z",
    "1990-01-01T00:00:00Z", "2099-12-31T23:59:59.999999Z", "2100-01-01T00:00:00Z", "2025-03-01T10:00Z",
    "٢٠٢٥-03-01T10:00:00Z", "2025-03-01", "", "2025-03-01T10:00:00z", 1740823200, 1740823200.5,
    "1740823200", None,
]  # fmt: skip
NAMES = [
    "KT-100", "", "a|b", "x" * 128, "x" * 129, "a\n", "\n", "a\x1f", "snow ☃", "a\x7f", "a\u0085", "Zürich",
    5, None, ["a"],
]  # fmt: skip
SERIALS = ["", "SN-1", "x" * 128, "x" * 129, "a\n", "a\t", "a\x7f", "a\u009f", "N°1", 5, None]
TEXTS = ["", "power_cord", "x" * 64, "x" * 65, "x" * 128, "x" * 129, 5, None, True, {"a": 1}]
VARIANTS: dict[str, list[object]] = {
    "event_id": ["e1", "", "x" * 200, "x" * 201, 7, None, 1.5],
    "kind": ["complaint", "repair", "return", "shipment", "population", "rumour", "Complaint", 1, None],
    "occurred_at": TIMES,
    "model": NAMES,
    "batch": NAMES,
    "serial": SERIALS,
    "failure_mode": TEXTS,
    "component": TEXTS,
    "region": TEXTS,
    "units": [0, 1, -1, 40_000, 10_000_000, 10_000_001, 5.0, 5.5, "5", True, False, None, 2**63 - 1],
    "severity": [
        {}, {"crash": True}, {"crash": 1}, {"crash": "true"}, {"crash": None}, {"boom": True}, None, [],
        "x", {"crash": False, "fire": True, "injury": True}, {"fire": 0.0},
    ],
    "surprise": [1, None],
}  # fmt: skip
RAW = [
    b'{"event_id":"a","event_id":"b","kind":"complaint","occurred_at":"2025-03-01T10:00:00Z",'
    b'"model":"M","batch":"B","failure_mode":"f"}',
    b'{"event_id":"a","kind":"shipment","occurred_at":"2025-03-01T10:00:00Z","model":"M","batch":"B",'
    b'"units":123456789012345678901234567890}',
    b'{"event_id":"a","kind":"shipment","occurred_at":"2025-03-01T10:00:00Z","model":"M","batch":"B",'
    b'"units":NaN}',
    b'{"event_id":"a\\ud800","kind":"complaint","occurred_at":"2025-03-01T10:00:00Z","model":"M",'
    b'"batch":"B","failure_mode":"f"}',
    b"[]",
    b"null",
    b'"x"',
    b"{}",
]


def _reference(payload: bytes | None) -> EventFields | Rejection:
    decoded = decode_event(payload)
    return decoded if isinstance(decoded, Rejection) else EventFields.of(decoded)


def _payloads() -> list[bytes]:
    rng = random.Random(7)
    out = [orjson.dumps(GOOD), *RAW]
    for name, values in VARIANTS.items():  # every variant of every field, one at a time
        out += [orjson.dumps({**GOOD, name: v}) for v in values]
        out.append(orjson.dumps({k: v for k, v in GOOD.items() if k != name}))
    for _ in range(4000):  # and random combinations of a few
        event: dict[str, object] = {**GOOD, "kind": rng.choice(VARIANTS["kind"][:5]), "units": 5}
        for name in rng.sample(sorted(VARIANTS), rng.randint(1, 3)):
            if rng.random() < 0.1:
                event.pop(name, None)
            else:
                event[name] = rng.choice(VARIANTS[name])
        out.append(orjson.dumps(event))
    return out


def test_decode_fields_gives_the_models_verdict_reason_and_values():
    payloads = _payloads()
    results = [decode_fields(p) for p in payloads]
    for payload, got in zip(payloads, results, strict=True):
        assert repr(got) == repr(_reference(payload)), payload
    # Both verdicts are well represented, so the comparison means something.
    assert 500 < sum(isinstance(r, EventFields) for r in results) < len(results) - 500


def test_canonical_events_skip_the_model(monkeypatch):
    from streams import records
    from streams.simulator import SimulationConfig, Simulator

    events = [e for _, batch in Simulator(SimulationConfig(seed=2, days=20)).run() for e in batch]
    payloads = [encode_event(e) for e in events]
    monkeypatch.setattr(records, "_validate", lambda data, payload: pytest.fail("took the model's path"))
    assert [decode_fields(p) for p in payloads] == [EventFields.of(e) for e in events]


# An event cannot be sent before it happens: one dated well after its Kafka record's timestamp has a
# wrong clock, and would hold its cell's open bucket in the future (audit: "one event dated far
# ahead stops a cell from ever alerting again").
SENT = 1_740_823_200.0  # 2025-03-01T10:00:00Z, GOOD's occurred_at


@pytest.mark.parametrize("decode", [decode_event, decode_fields])
def test_an_event_dated_after_its_record_was_sent_is_rejected_with_the_reason(decode):
    payload = orjson.dumps({**GOOD, "occurred_at": "2099-06-01T00:00:00Z"})
    got = decode(payload, SENT, 86_400)
    assert isinstance(got, Rejection) and got.payload == payload
    assert "2099-06-01T00:00:00Z" in got.reason and "2025-03-01T10:00:00Z" in got.reason
    assert "detection.max_event_lead_s" in got.reason
    # The verdict depends on the record alone, so a replay of the same record gets the same one.
    assert decode(payload, SENT, 86_400) == got


@pytest.mark.parametrize("decode", [decode_event, decode_fields])
@pytest.mark.parametrize(
    ("sent_at", "accepted"),
    [
        (SENT, True),  # sent as it happened
        (SENT - 86_400, True),  # at most max_lead_s ahead: clock skew, a misapplied time zone
        (SENT - 86_401, False),
        (SENT + 10 * 365 * 86_400, True),  # a replay or backtest of old events
        (None, True),  # no record, or a record without a timestamp (Kafka's -1): nothing to compare
        (0.0, True),
        (-0.001, True),
    ],
)
def test_the_lead_over_the_records_timestamp_decides(decode, sent_at, accepted):
    got = decode(orjson.dumps(GOOD), sent_at, 86_400)
    assert isinstance(got, Rejection) != accepted, got


def test_decode_fields_and_decode_event_give_the_same_lead_verdict_and_reason():
    for payload in _payloads()[:400]:
        for sent_at in (SENT - 40 * 86_400, SENT, SENT + 86_400):
            fields, event = decode_fields(payload, sent_at, 3_600), decode_event(payload, sent_at, 3_600)
            assert isinstance(fields, Rejection) == isinstance(event, Rejection)
            if isinstance(fields, Rejection):
                assert isinstance(event, Rejection) and fields.reason == event.reason


def test_a_population_counted_after_a_shipment_recorded_ahead_is_dated_now_and_accepted() -> None:
    # Dated at its cell's latest shipment, a count after one unit recorded as shipped in 2099 was
    # dead-lettered by the lead rule, and so was every later count of the cell: a frozen denominator.
    now = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()
    ahead = population_event("KT-100", "B05", int(datetime(2099, 1, 1, tzinfo=UTC).timestamp()), 20_001, now)
    assert ahead.occurred_at.timestamp() == now and ahead.units == 20_001
    decoded = decode_event(encode_event(ahead), sent_at=now, max_lead_s=86_400)
    assert not isinstance(decoded, Rejection), decoded
    past = population_event("KT-100", "B05", int(now) - 86_400, 20_000, now)
    assert past.occurred_at.timestamp() == now - 86_400  # a count of the past keeps its own date
    assert past.event_id != ahead.event_id
