"""The project rule, fuzzed: API errors are 4xx with a message, never 5xx.

Every route of the app (read from its OpenAPI schema, so a new route is fuzzed without touching
this file) gets malformed requests: wrong JSON types, missing and extra fields, huge, negative and
non-finite numbers, long and control-character strings, empty and non-JSON bodies, bad query
parameters, odd path parameters; and plausible requests at the edges of what is valid. Each is sent
as the highest role (so authorization does not answer everything) and without a key. Slack clicks
are signed with the app's secret, so their payloads get past the signature check.

One app and one chdb store for the module: the server back end already runs the functional tests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from httpx import Response
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from api.app import create_api
from cases.commands import Command
from cases.identity import SignalIdentity, case_id_for
from cases.risk import DEFAULT_MATRIX
from core.access import ROLES, AccessPolicy
from recallwatch.case_desk import CaseDesk
from recallwatch.registry_import import import_files
from sinks.case_store import CaseStore
from sinks.clickhouse import open_store
from sinks.registry_store import RegistryStore

pytestmark = pytest.mark.integration
TOP_ROLE = ROLES[-1]  # roles are ordered by what they may do: the last may do everything
KEY = {"X-API-Key": f"key-{TOP_ROLE}"}
SECRET = "fuzz-signing-secret"
IDENTITY = ["cell", "KT", "B1", "overheat"]
CASE = case_id_for(SignalIdentity.from_list(IDENTITY))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("api-fuzz")
    store = open_store(None, tmp / "chdb")
    store.migrate()
    lines = ["serial,model,batch,line,plant,produced_at,supplier_lots,shipped_at,region,customer_email"]
    lines += [
        f"KT-{i:05d},KT,B{1 + i // 10},L1,P1,2024-01-01,battery=LOT-{i // 5},2024-02-01,EU,u{i}@example.com"
        for i in range(20)
    ]
    lines.append("odd/serial %2F,KT,B1,L1,P1,2024-01-01,,,EU,")  # a slash and a percent in a serial
    (tmp / "units.csv").write_text("\n".join(lines) + "\n")
    import_files([tmp / "units.csv"], RegistryStore(store), now=1_760_000_000, progress=False)
    desk = CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=time.time)
    desk.on_alert({"alert_id": "a1", "model": "KT", "batch": "B1", "failure_mode": "overheat"}, 1.0)
    assert desk.run(Command("c0", CASE, "assess", "qm", 2.0, "look", {}))[0].status == "ok"
    policy = AccessPolicy(keys={f"key-{role}": role for role in ROLES}, anonymous_role=None)
    app = create_api(store, "http://rw.test", policy, slack_signing_secret=SECRET)
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            yield c
    finally:
        store.close()


# --- what a request is made of -------------------------------------------------------------------

ODD = [
    "", " ", "\x00", "\x1f", "\x7f", "\u202e", "\ud7ff", "\ufeff", "é", "日本", "😀", "a/b", "..", "%", "%2F",
    "%00", "'", '"', "\\", "{x}", "{limit}", "NaN", "nan", "Infinity", "-Infinity", "inf", "-1", "0", "1e309",
    "-0", "1.5", "true", "null", "[]", "{}", "9" * 30, "-" + "9" * 30, "x" * 10_000, "case-" + "0" * 20,
    "case-" + "A" * 20, "task-000000000000", "recallwatch", "slack-1", "*",
]  # fmt: skip
ODD_TEXT = st.sampled_from(ODD)
TEXT = st.one_of(ODD_TEXT, st.text(max_size=40), st.text(st.characters(max_codepoint=0x1F), max_size=5))
NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 5, 6, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)
# JSON may spell lone surrogates ("\ud800"), which no UTF-8 encodes: pydantic refuses them, and the
# 422 that echoed them was a 500. Only in bodies: httpx cannot put them in a URL or a header.
SURROGATES = st.one_of(
    st.sampled_from(["\ud800", "x\udfff", "\udbff\udbff"]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
)
BODY_TEXT = st.one_of(TEXT, SURROGATES)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, BODY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(BODY_TEXT, inner, max_size=4),
    max_leaves=12,
)

# Plausible bodies per route; mutated into implausible ones. A route without one is fuzzed from {}.
SEEDS: dict[tuple[str, str], list[Any]] = {
    ("POST", "/v1/scopes/resolve"): [
        {"model": "KT", "batches": ["B1"]},
        {"supplier_lots": ["LOT-1"]},
        {"produced_from": "2024-01-01", "produced_to": "2024-01-02"},
        {"shipped_from": "2024-01-01T00:00:00Z", "shipped_to": "2024-03-01T00:00:00+01:00"},
        {"produced_to": "9999-12-31"},
        {"produced_from": "0001-01-01"},
        {"shipped_from": "0001-01-01T00:00:00+01:00"},
        {"shipped_to": "9999-12-31T23:59:59-01:00"},
    ],
    ("POST", "/v1/cases"): [
        {"identity": IDENTITY, "reason": "lab finding", "actor": "qm.kim"},
        {"identity": ["lot", "LOT-1"], "reason": "supplier", "actor": "qm.kim"},
    ],
    ("POST", "/v1/cases/{case_id}/commands/{kind}"): [
        {"reason": "r", "actor": "ana", "args": {}},
        {"reason": "r", "actor": "ana", "args": {"dimension": "severity", "value": 5}},
        {"reason": "r", "actor": "ana", "args": {"decision": "recall"}},
        {"reason": "r", "actor": "ana", "args": {"until": 1e18}},
        {"reason": "r", "actor": "ana", "args": {"title": "t", "owner": "o", "role": "quality", "due": 1e18}},
        {"reason": "r", "actor": "ana", "args": {"scope": [["lot", "L"]], "remedy": "refund"}},
        {"reason": "r", "actor": "ana", "args": {"note": "n", "complaints": ["e1"]}},
        {"reason": "r", "actor": "ana", "args": {"person": "p", "role": "quality_manager"}},
        {"reason": "r", "actor": "ana", "args": {"task_id": "task-000000000000"}},
    ],
}
SEEDS[("POST", "/v1/scopes/units.csv")] = SEEDS[("POST", "/v1/scopes/resolve")]
PATH_SEEDS = {
    "case_id": [CASE, "case-" + "0" * 20],
    "kind": ["assess", "score", "decide", "silence", "add_task", "launch_campaign", "open", "escalate"],
    "serial": ["KT-00001", "odd%2Fserial%20%252F", "odd/serial %2F", "KT-00001/extra"],
    "alert_id": ["a1", "abc123"],
}
QUERY_SEEDS = {
    "limit": ["1", "1000", "10000", "10001", "0"],
    "max_ranges": ["1", "100000", "100001"],
    "window_s": ["1", "604800", str(2**32), str(2**63), str(2**64), "1" + "0" * 30],
    "model": ["KT"],
    "batch": ["B1"],
    "state": ["open", "assessing", "OPEN"],
    "order": ["rank", "updated"],
    "failure_mode": ["*", "overheat"],
}


def mutate(value: Any) -> st.SearchStrategy[Any]:
    """A seed with one thing wrong: a field dropped, added, or its value replaced, at any depth."""
    if isinstance(value, dict) and value:
        key = st.sampled_from(sorted(value))
        return st.one_of(
            key.map(lambda k: {n: v for n, v in value.items() if n != k}),
            st.tuples(BODY_TEXT, JSON_VALUES).map(lambda kv: {**value, kv[0]: kv[1]}),
            st.tuples(key, JSON_VALUES).map(lambda kv: {**value, kv[0]: kv[1]}),
            key.flatmap(lambda k: mutate(value[k]).map(lambda v: {**value, k: v})),
        )
    if isinstance(value, list) and value:
        i = st.integers(0, len(value) - 1)
        return st.one_of(
            st.just([]),
            st.just(value * 3000),
            i.flatmap(lambda n: mutate(value[n]).map(lambda v: [*value[:n], v, *value[n + 1 :]])),
        )
    return JSON_VALUES


def as_json(body: Any) -> dict[str, Any]:
    # Encoded here, not by httpx: its encoder refuses NaN and Infinity, which callers can still send.
    return {"content": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


def body_for(key: tuple[str, str]) -> st.SearchStrategy[dict[str, Any]]:
    """Request kwargs carrying a body: a seed, a mutated seed, any JSON, or bytes that are not JSON."""
    seed = st.sampled_from(SEEDS.get(key, [{}]))
    return st.one_of(
        seed.map(as_json),
        seed.flatmap(mutate).map(as_json),
        JSON_VALUES.map(as_json),
        st.sampled_from(
            [b"", b"{", b"null", b"NaN", b'{"a": NaN}', b"\xff\xfe", b"[1, 2", b"1" * 5000, b"{}" * 3]
        ).map(lambda raw: {"content": raw, "headers": {"Content-Type": "application/json"}}),
        st.just({"content": b"model=KT", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        st.just({"content": b'{"model": "KT"}', "headers": {"Content-Type": "text/plain"}}),
    )


def path_value(name: str) -> st.SearchStrategy[str]:
    """A path segment, percent-encoded (so %2F, control characters and 10k characters arrive as such)."""
    raw = st.one_of(st.sampled_from(PATH_SEEDS.get(name, ["x"])), TEXT.filter(bool))
    return st.one_of(raw.map(lambda v: quote(v, safe="")), st.sampled_from(PATH_SEEDS.get(name, ["x"])))


def query_for(names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    def value(name: str) -> st.SearchStrategy[str]:
        return st.one_of(st.sampled_from(QUERY_SEEDS.get(name, ["x"])), TEXT)

    fixed = st.fixed_dictionaries({}, optional={n: value(n) for n in names})
    extra = st.dictionaries(TEXT.filter(bool), TEXT, max_size=2)
    return st.tuples(fixed, extra).map(lambda q: {**q[1], **q[0]})


def routes(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path template, OpenAPI operation) the app serves, and the docs pages besides.

    From the OpenAPI schema, not ``app.routes``: included routers sit there as unexpanded entries.
    """
    out = [
        (method.upper(), path, operation)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
    ]
    docs = [r.path for r in app.routes if isinstance(r, Route) and not isinstance(r, APIRoute)]
    return out + [("GET", path, {}) for path in docs]


@st.composite
def request_for(draw: st.DrawFn, method: str, path: str, operation: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, list[str]] = {}
    for p in operation.get("parameters", []):
        params.setdefault(p["in"], []).append(p["name"])
    url = path
    for name in params.get("path", []):
        url = url.replace(f"{{{name}}}", draw(path_value(name)))
    kw: dict[str, Any] = {"method": method, "url": url, "headers": {}}
    kw["params"] = draw(query_for(params.get("query", [])))
    if "requestBody" in operation:
        body = draw(body_for((method, path)))
        kw["headers"].update(body.pop("headers", {}))
        kw.update(body)
    if "Idempotency-Key" in params.get("header", []):
        key = draw(st.one_of(st.none(), st.sampled_from(["k-1", "slack-x", " ", "k" * 200]), TEXT))
        if key is not None and key.isascii() and key.isprintable():
            kw["headers"]["Idempotency-Key"] = key
    if path == "/v1/slack/actions":
        kw.update(draw(slack_click()))
    return kw


# --- Slack: signed, so the payload is what gets fuzzed -----------------------------------------------

CLICK = {
    "type": "block_actions",
    "trigger_id": "t-1",
    "user": {"id": "U1", "username": "bob"},
    "actions": [{"action_id": "case_acknowledge", "value": CASE, "action_ts": "1700000000.1"}],
}


def sign(body: bytes, ts: str) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
    }


@st.composite
def slack_click(draw: st.DrawFn) -> dict[str, Any]:
    payload = draw(st.one_of(st.just(CLICK), mutate(CLICK), JSON_VALUES))
    form = draw(
        st.one_of(
            st.just(urlencode({"payload": json.dumps(payload)})),
            st.sampled_from(["", "payload=", "payload", "payload=%FF", "a=b", "payload={&payload=}"]),
        )
    )
    ts = draw(
        st.one_of(
            st.builds(lambda: str(int(time.time()))),  # fresh, so the signature is checked
            st.sampled_from(["", "0", "-1", "nan", "1e9", " 1 ", "1" + "0" * 400, "9" * 5000, "١٢"]),
        )
    )
    body = form.encode("utf-8", "surrogatepass")
    headers = sign(body, ts) if ts.isascii() else {"X-Slack-Request-Timestamp": "1"}
    if draw(st.booleans()) and not draw(st.booleans()):
        headers["X-Slack-Signature"] = "v0=" + "0" * 64
    return {"content": body, "headers": headers}


# No shrinking: a failure already names its request, and shrinking a draw of one request per route
# through hundreds of store round trips takes minutes.
NO_SHRINK = (Phase.explicit, Phase.generate)


# --- the rule --------------------------------------------------------------------------------------


def check(r: Response, sent: dict[str, Any]) -> None:
    where = f"{sent['method']} {sent['url'][:200]} params={str(sent.get('params'))[:200]}"
    assert r.status_code < 500, f"{where} -> {r.status_code} {r.text[:500]}"
    if 400 <= r.status_code < 500:
        try:
            detail = r.json()["detail"]
        except (ValueError, KeyError, TypeError):
            pytest.fail(f"{where} -> {r.status_code} without a JSON detail: {r.text[:500]}")
        # A string, or FastAPI's list of validation errors (each with a message).
        if isinstance(detail, list):
            messages = [str(e.get("msg", "")).strip() if isinstance(e, dict) else "" for e in detail]
            assert messages and all(messages), (
                f"{where} -> a validation error without a message {r.text[:200]}"
            )
        else:
            assert isinstance(detail, str) and detail.strip(), f"{where} -> empty detail {r.text[:200]}"


def send(client: TestClient, req: dict[str, Any], headers: dict[str, str]) -> Response:
    kw = {**req, "headers": {**req["headers"], **headers}}
    return client.request(**kw)


@settings(max_examples=150, phases=NO_SHRINK)
@given(data=st.data())
def test_no_route_answers_5xx_to_the_top_role(client: TestClient, data: st.DataObject) -> None:
    for method, path, operation in routes(client.app):
        req = data.draw(request_for(method, path, operation), label=f"{method} {path}")
        check(send(client, req, KEY), req)


@settings(max_examples=60, phases=NO_SHRINK)
@given(data=st.data())
def test_no_route_answers_5xx_without_a_key(client: TestClient, data: st.DataObject) -> None:
    for method, path, operation in routes(client.app):
        req = data.draw(request_for(method, path, operation), label=f"{method} {path}")
        r = send(client, req, {})
        check(r, req)
        if path.startswith("/v1/") and path != "/v1/slack/actions":
            # A malformed body is refused before the key is checked (FastAPI parses it first): a 4xx
            # either way, never an answer.
            assert r.status_code >= 400, (path, r.status_code)


@settings(max_examples=300, phases=NO_SHRINK)
@given(req=slack_click())
def test_signed_slack_clicks_never_answer_5xx(client: TestClient, req: dict[str, Any]) -> None:
    sent = {"method": "POST", "url": "/v1/slack/actions", **req}
    check(client.post("/v1/slack/actions", **req), sent)


@pytest.mark.parametrize("role", ROLES)
def test_every_route_answers_its_seeds_below_500(client: TestClient, role: str) -> None:
    """The plausible requests themselves, as every role: edge-valid input is an answer, never a 5xx."""
    for method, path, operation in routes(client.app):
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        combos = [dict(zip(names, values, strict=True)) for values in _product(names)]
        for values in combos:
            url = path
            for name, v in values.items():
                url = url.replace(f"{{{name}}}", v)
            for body in SEEDS.get((method, path), [None]):
                req = {"method": method, "url": url, "headers": {"X-API-Key": f"key-{role}"}}
                if body is not None:
                    req["json"] = body
                check(client.request(**req), req)


def _product(names: list[str]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]
    for name in names:
        out = [(*t, v) for t in out for v in PATH_SEEDS.get(name, ["x"])]
    return out


def test_odd_numbers_in_queries(client: TestClient) -> None:
    """Query numbers past every bound a store column has: a 4xx or an empty answer."""
    for value in ("-1", "0", "1e3", "NaN", "inf", str(2**32), str(2**63), str(2**64), "9" * 5000):
        for url, name in (("/v1/rates?model=KT&batch=B1", "window_s"), ("/v1/alerts?", "limit")):
            req = {"method": "GET", "url": f"{url}&{name}={value}", "headers": KEY}
            check(client.request(**req), req)


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/scopes/resolve", b"NaN"),  # FastAPI echoed NaN in its 422, which JSON cannot write
        ("/v1/cases", b'{"identity": Infinity, "reason": "r", "actor": "a"}'),
        ("/v1/scopes/resolve", b'{"modle": ' + b"1" * 400 + b"}"),  # a huge number, echoed back too
        ("/v1/scopes/resolve", b'{"model": "KT", "models": 5}'),  # `[*5]` was a TypeError
        ("/v1/scopes/resolve", b'{"produced_to": "9999-12-31"}'),  # the day after overflowed
        ("/v1/scopes/units.csv", b'{"shipped_to": "9999-12-31"}'),
        # A lone surrogate, echoed in the 422, which UTF-8 could not encode.
        ("/v1/scopes/resolve", b'{"models": ["\\ud800"]}'),
        ("/v1/scopes/units.csv", b'{"\\udfff": 1}'),
        ("/v1/cases", b'{"identity": ["cell", "K\\ud800", "B", "*"], "reason": "r", "actor": "a"}'),
        (
            f"/v1/cases/{CASE}/commands/evidence",
            b'{"reason": "r\\ud800", "actor": "a", "args": {"note": "n"}}',
        ),
        # Names past what fits ClickHouse's max_query_size: "Max query size exceeded".
        (
            "/v1/scopes/resolve",
            json.dumps({"models": [f"{i:05d}" + "x" * 123 for i in range(10_000)]}).encode(),
        ),
        ("/v1/scopes/units.csv", json.dumps({"stores": ["'" * 128] * 1000}).encode()),
        # Dates 18.16 wrapped around (1960 read as 2096).
        ("/v1/scopes/resolve", b'{"produced_to": "1960-01-01"}'),
        ("/v1/scopes/units.csv", b'{"shipped_from": "1900-01-01T00:00:00Z"}'),
    ],
)
def test_the_5xx_the_fuzz_found_are_4xx(client: TestClient, url: str, body: bytes) -> None:
    headers = {**KEY, "Content-Type": "application/json"}
    req = {"method": "POST", "url": url, "content": body, "headers": headers}
    r = client.request(**req)
    check(r, req)
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("ts", "action"),
    [
        ("1" + "0" * 400, {"action_id": "case_acknowledge", "value": CASE}),  # overflowed the age check
        (None, {"action_id": {}, "value": CASE}),  # an unhashable action_id
    ],
)
def test_the_slack_5xx_the_fuzz_found_are_4xx(client: TestClient, ts: str | None, action: dict) -> None:
    body = urlencode({"payload": json.dumps({**CLICK, "actions": [action]})}).encode()
    req = {"method": "POST", "url": "/v1/slack/actions", "content": body}
    req["headers"] = sign(body, ts or str(int(time.time())))
    r = client.request(**req)
    check(r, req)
    assert r.status_code in (400, 401)
