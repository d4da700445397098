"""The API against a real store on both back ends: answers, 4xx for bad input, never a 5xx."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_api
from core.alerts import Alert, alert_id_for
from streams.processing import alert_row

DAY = 86_400


@pytest.fixture
def client(store):
    alert = Alert(
        alert_id=alert_id_for("KT-200", "B04", "heating_element", 30 * DAY),
        model="KT-200",
        batch="B04",
        failure_mode="heating_element",
        opened_at=30 * DAY,
        detector="poisson_cusum",
        detector_params={"threshold": 12.0},
        config_version="abc",
        score=1.3,
        count=9,
        expected=1.5,
        units_in_field=20_000,
        rate_per_1000=1.2,
        expected_rate_per_1000=0.4,
        window_s=7 * DAY,
        detectors_fired=("poisson_cusum",),
    )
    store.insert("alerts", [alert_row(alert, 1_700_000_000)])
    store.insert(
        "rates",
        [
            {
                "model": "KT-200",
                "batch": "B04",
                "failure_mode": fm,
                "bucket_start": d * DAY,
                "bucket_s": DAY,
                "window_s": 7 * DAY,
                "count": d,
                "window_count": d,
                "units_in_field": 20_000,
                "exposure_unit_days": 20_000.0,
                "expected": 1.0,
                "rate_per_1000": 0.05 * d,
                "window_rate_per_1000": 0.05 * d,
            }
            for d in range(1, 4)
            for fm in ("*", "heating_element")
        ],
    )
    with TestClient(create_api(store, "http://rw.test")) as c:
        c.alert = alert
        yield c


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["clickhouse"] in ("chdb", "server")


def test_rates_over_time(client):
    body = client.get("/v1/rates", params={"model": "KT-200", "batch": "B04"}).json()
    assert [p["count"] for p in body["points"]] == [1, 2, 3]
    assert [p["bucket_start"] for p in body["points"]] == [DAY, 2 * DAY, 3 * DAY]
    fm = client.get(
        "/v1/rates", params={"model": "KT-200", "batch": "B04", "failure_mode": "heating_element"}
    )
    assert len(fm.json()["points"]) == 3
    assert client.get("/v1/rates", params={"model": "nope", "batch": "B04"}).json()["points"] == []


def test_alerts_list_and_detail(client):
    listed = client.get("/v1/alerts").json()["alerts"]
    assert [a["alert_id"] for a in listed] == [client.alert.alert_id]
    assert listed[0]["url"] == f"http://rw.test/v1/alerts/{client.alert.alert_id}"
    detail = client.get(f"/v1/alerts/{client.alert.alert_id}").json()
    assert detail["model"] == "KT-200" and detail["detector"] == "poisson_cusum"
    assert detail["deliveries"] == []
    assert client.get("/v1/alerts", params={"model": "other"}).json()["alerts"] == []


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/alerts/doesnotexist", {}, 404),
        ("/v1/alerts/bad'id", {}, 422),
        ("/v1/rates", {"model": "KT-200"}, 422),
        ("/v1/rates", {"model": "", "batch": "B"}, 422),
        ("/v1/rates", {"model": "M", "batch": "B", "limit": 0}, 422),
        ("/v1/rates", {"model": "M", "batch": "B", "window_s": "week"}, 422),
        ("/v1/alerts", {"limit": 100000}, 422),
    ],
)
def test_bad_requests_are_4xx_with_a_message(client, path, params, status):
    response = client.get(path, params=params)
    assert response.status_code == status
    assert response.json()["detail"]


def test_hostile_filters_are_data_not_sql(client):
    response = client.get("/v1/rates", params={"model": "x' OR 1=1 --", "batch": "B04"})
    assert response.status_code == 200 and response.json()["points"] == []


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    assert "/v1/alerts/{alert_id}" in client.get("/openapi.json").json()["paths"]
