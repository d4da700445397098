from __future__ import annotations

import orjson
import pytest

from streams.records import Event, Rejection, cell_key, decode_event, encode_event

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
        ({"model": "a|b"}, "model"),
        ({"batch": ""}, "batch"),
        ({"surprise": 1}, "Extra inputs"),
        ({"kind": "shipment", "units": 0}, "units > 0"),
        ({"units": -5}, "units"),
    ],
)
def test_invalid_events_are_rejected_with_the_reason(change, reason):
    result = decode_event(orjson.dumps({**GOOD, **change}))
    assert isinstance(result, Rejection)
    assert reason in result.reason


@pytest.mark.parametrize("payload", [None, b"", b"not json", b"[1,2]", b'"str"', b"\x00\xff"])
def test_garbage_is_rejected_not_raised(payload):
    assert isinstance(decode_event(payload), Rejection)
