"""The OpenAPI document at /openapi.json describes the real responses, and fuzzing the
webhook and API endpoints from it finds no server error and no undocumented answer."""

import json

import httpx
import jsonschema_rs
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from app.observability.openapi import DOCUMENT
from app.records.models import Message, RawBody, db
from support.fixtures import fixture_bytes

# An oversized negative body is rightly refused with 413, which the check does not expect by default.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": ["400", "401", "403", "404", "405", "413", "415", "422", "429"]
            }
        }
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
FUZZ_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


def test_document_is_served_without_login(anon_client):
    response = anon_client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(DOCUMENT))
    assert response.get_json()["openapi"].startswith("3.")


def test_document_covers_every_webhook_api_and_export_route(app):
    documented = {
        (path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item
    }
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in ("webhooks", "api", "export"):
            path = rule.rule.replace("<request_id>", "{requestId}")
            routes |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented


def _validator(path, method, status, media="application/json"):
    body = DOCUMENT["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]
    return jsonschema_rs.validator_for({**body, "components": DOCUMENT["components"]})


def test_real_responses_match_the_document(live_server, api_token):
    """Each documented answer, produced for real, validates against its schema."""
    auth = {"Authorization": f"Bearer {api_token}"}
    rid = "f6a7d49946094857ae02812969a83056"
    with httpx.Client(base_url=live_server.url) as http:
        cases = [
            (
                "/webhooks/viber/dr",
                "post",
                http.post(
                    "/webhooks/viber/dr",
                    content=fixture_bytes("dr_seen"),
                    headers={"Content-Type": "application/json"},
                ),
            ),
            (
                "/webhooks/viber/message",
                "post",
                http.post(
                    "/webhooks/viber/message",
                    content=fixture_bytes("reply_text"),
                    headers={"Content-Type": "application/json"},
                ),
            ),
            (
                "/webhooks/viber/dr",
                "post",
                http.post(
                    "/webhooks/viber/dr", content=b"{", headers={"Content-Type": "application/json"}
                ),
            ),
            (
                "/webhooks/viber/dr",
                "post",
                http.post(
                    "/webhooks/viber/dr", content=b"{}", headers={"Content-Type": "text/plain"}
                ),
            ),
            ("/webhooks/viber/dr", "post", http.post("/webhooks/viber/dr", json={"status": 1})),
            (
                "/api/messages",
                "post",
                http.post(
                    "/api/messages", headers=auth, json={"requestId": rid, "phone": "79100000030"}
                ),
            ),
            (
                "/api/messages",
                "post",
                http.post(
                    "/api/messages", headers=auth, json={"requestId": rid, "phone": "79100000030"}
                ),
            ),
            ("/api/messages", "post", http.post("/api/messages", json={"requestId": rid})),
            (
                "/api/messages",
                "post",
                http.post("/api/messages", headers=auth, json={"requestId": rid}),
            ),
            ("/api/messages/{requestId}", "get", http.get(f"/api/messages/{rid}", headers=auth)),
            ("/api/messages/{requestId}", "get", http.get("/api/messages/nope", headers=auth)),
            ("/api/messages/{requestId}", "get", http.get(f"/api/messages/{rid}")),
        ]
        statuses = []
        for path, method, response in cases:
            statuses.append(response.status_code)
            media = response.headers["Content-Type"].split(";")[0]
            assert str(response.status_code) in DOCUMENT["paths"][path][method]["responses"]
            if media == "application/json":
                _validator(path, method, response.status_code).validate(response.json())
            else:
                assert response.text == "success"
    assert statuses == [200, 200, 400, 415, 422, 201, 200, 401, 422, 200, 404, 401]


def test_the_export_is_described_with_its_filters_csv_and_bearer_security(
    app, live_server, api_token
):
    """/export.csv: every argument the export reads, a text/csv answer, a bearer token; and
    its real answers (the file, a bad argument, a bad token) are the documented ones."""
    get = DOCUMENT["paths"]["/export.csv"]["get"]
    names = {p["name"] for p in get["parameters"]}
    assert names == {
        "kind",
        "status",
        "phone",
        "code",
        "q",
        "from",
        "to",
        "anomaly",
        "tag",
        "appkey",
    }
    assert all(p["in"] == "query" and not p.get("required") for p in get["parameters"])
    assert {"bearerAuth": []} in get["security"]
    assert DOCUMENT["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert list(get["responses"]["200"]["content"]) == ["text/csv"]
    auth = {"Authorization": f"Bearer {api_token}"}
    with httpx.Client(base_url=live_server.url) as http:
        # Each argument the document names is one the export reads: a bad value is refused
        # naming it.
        bad = {"status": "read", "code": "x", "from": "May", "to": "x", "phone": "\x01"}
        for name, value in {**bad, "kind": "all", "q": "a" * 200, "tag": "a\x01"}.items():
            refused = http.get("/export.csv", params={name: value}, headers=auth)
            assert refused.status_code == 400, name
            _validator("/export.csv", "get", 400).validate(refused.json())
            assert refused.json()["field"] == name
        file = http.get("/export.csv", params={"kind": "replies"}, headers=auth)
        assert file.status_code == 200 and file.headers["Content-Type"].startswith("text/csv")
        unauthorized = http.get("/export.csv", headers={"Authorization": "Bearer nope"})
        assert unauthorized.status_code == 401
        _validator("/export.csv", "get", 401).validate(unauthorized.json())


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_documented_answers(case, live_server, api_token):
    """Bounded schemathesis run per operation: no 5xx, every answer as documented."""
    case.call_and_validate(
        base_url=live_server.url,
        headers={"Authorization": f"Bearer {api_token}"},
        checks=FUZZ_CHECKS,
    )


def test_fuzzing_left_every_body_stored(app, live_server, api_token):
    """A short fuzz run through real HTTP: whatever the outcome, each body is in the record."""
    sent = 0
    operation = schema["/webhooks/viber/dr"]["POST"]

    @settings(
        max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy())
    def run(case):
        nonlocal sent
        response = case.call(base_url=live_server.url)
        assert response.status_code < 500
        sent += 1

    run()
    with app.app_context():
        stored = db.session.execute(db.select(db.func.count(RawBody.id))).scalar_one()
        accepted = db.session.execute(
            db.select(db.func.count(RawBody.id)).where(
                RawBody.outcome.in_(["accepted", "duplicate"])
            )
        ).scalar_one()
        messages = db.session.execute(db.select(db.func.count(Message.request_id))).scalar_one()
    assert stored == sent > 0
    assert messages <= accepted
