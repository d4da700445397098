"""A campaign's remedy and its extended scope reach the unit lookup of every unit it covers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_api
from cases.commands import Command
from cases.risk import DEFAULT_MATRIX
from core.access import AccessPolicy
from recallwatch.case_desk import CaseDesk
from recallwatch.registry_import import import_files
from sinks.case_store import CaseStore
from sinks.registry_store import RegistryStore

pytestmark = pytest.mark.integration
VIEWER = {"X-API-Key": "viewer-key-456"}


@pytest.fixture
def client(store, tmp_path: Path):
    lines = ["serial,model,batch,line,plant,produced_at"]
    lines += [f"KT-{i:05d},KT,B{1 + i // 10},L1,P1,2024-01-01" for i in range(30)]  # B1, B2, B3
    (tmp_path / "units.csv").write_text("\n".join(lines) + "\n")
    import_files([tmp_path / "units.csv"], RegistryStore(store), now=1_760_000_000, progress=False)
    policy = AccessPolicy(keys={"viewer-key-456": "viewer"}, anonymous_role=None)
    with TestClient(create_api(store, "http://rw.test", policy)) as c:
        yield c


def _recall(desk: CaseDesk, args: dict) -> tuple[str, str]:
    (opened,) = desk.on_alert(
        {"alert_id": "a1", "model": "KT", "batch": "B1", "failure_mode": "overheat"}, 1.0
    )
    cid = opened.case_id
    for i, (kind, a) in enumerate([("assess", {}), ("decide", {"decision": "recall"})]):
        assert desk.run(Command(f"c{i}", cid, kind, "qm", 3.0 + i, "burns", a))[0].status == "ok"
    result, _ = desk.run(Command("c9", cid, "launch_campaign", "qm", 9.0, "go", args))
    return cid, result.status


def test_units_in_the_campaign_scope_show_its_remedy(client: TestClient, store) -> None:
    desk = CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=time.time)
    cid, status = _recall(desk, {"scope": [["cell", "KT", "B2", "overheat"]], "remedy": "replace"})
    assert status == "ok"
    for serial in ("KT-00005", "KT-00015"):  # B1 (the case's own cell) and B2 (extended to)
        affected = client.get(f"/v1/units/{serial}", headers=VIEWER).json()["affected"]
        assert affected["status"] == "under recall" and affected["remedy"] == "replace", serial
        assert affected["campaigns"] == [cid]
    b3 = client.get("/v1/units/KT-00025", headers=VIEWER).json()["affected"]
    assert b3["status"] == "not affected" and b3["remedy"] is None
    case = client.get(f"/v1/cases/{cid}", headers=VIEWER).json()
    assert case["campaign_remedy"] == "replace"


def test_the_default_remedy_is_repair_and_unknown_remedies_are_refused(client: TestClient, store) -> None:
    desk = CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=time.time)
    cid, status = _recall(desk, {"remedy": "magic"})
    assert status == "refused"
    assert desk.store.result("c9").detail.startswith("remedy must be one of repair, replace, refund, inspect")
    assert desk.run(Command("c10", cid, "launch_campaign", "qm", 10.0, "go", {}))[0].status == "ok"
    affected = client.get("/v1/units/KT-00001", headers=VIEWER).json()["affected"]
    assert affected["remedy"] == "repair"
