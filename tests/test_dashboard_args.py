"""The dashboard's query arguments: a value at the edge of its type (a code of 100 digits, an
id past BIGINT, year 1 or 9999) is a 400 naming the argument, never a 500 or a stream cut
short; schemathesis throws arbitrary values at every argument of every page."""

import base64

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

NINES = "9" * 100


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "path,field",
    [
        ("/?code=" + NINES, "code"),
        ("/?code=-" + "9" * 30, "code"),
        ("/analytics?code=" + NINES, "code"),
        ("/analytics/data.json?code=" + NINES, "code"),
        ("/rejected?after=99999999999999999999999", "after"),
        ("/rejected?reprocessed=99999999999999999999999", "reprocessed"),
        ("/rejected?after=abc", "after"),
        ("/rejected?after=-5", "after"),
        ("/export.csv?code=" + "9" * 30, "code"),
        ("/export.csv?kind=replies&code=" + "9" * 30, "code"),
        ("/analytics?range=custom&start=0001-01-01T00:00:00%2B01:00", "start"),
        ("/analytics?range=custom&start=2024-01-01T00:00&end=9999-12-31T23:59:59-01:00", "end"),
        ("/?to=9999-12-31", "to"),
        ("/export.csv?to=9999-12-31", "to"),
        ("/analytics?to=9999-12-31", "to"),
        ("/?after=" + cursor("0001-01-01T00:00:00+01:00\nx"), "after"),
        ("/?before=" + cursor("0001-01-01T00:00:00+01:00\nx"), "before"),
        ("/conversations?after=" + cursor("0001-01-01T00:00:00+01:00\nx"), "after"),
        ("/conversations?after=" + cursor("2024-01-01T00:00:00\nx"), "after"),
    ],
)
def test_values_at_the_edge_of_their_type_are_400_naming_the_argument(client, path, field):
    client.post("/api/messages", json={"requestId": "r-edge", "phone": "79100000030"})
    response = client.get(path)
    body = response.get_data(as_text=True)  # a streamed export is read to its end
    assert response.status_code == 400, (path, response.status_code)
    if response.is_json:
        assert response.get_json()["field"] == field
    else:
        assert f"{field}:" in body


def test_the_edges_that_are_valid_still_answer(client):
    client.post("/api/messages", json={"requestId": "r-edge", "phone": "79100000030"})
    for path in (
        "/?from=0001-01-01",
        "/?code=2147483647",
        "/?code=-2147483648",
        "/?code=%2B5",
        "/export.csv?from=0001-01-01&to=9999-12-30",
        "/analytics?range=custom&start=1970-01-01T00:00&end=1970-12-31T00:00",
        "/analytics?range=custom&start=9998-12-31T00:00&end=9998-12-31T23:59",
        "/rejected?after=9223372036854775807",
    ):
        response = client.get(path)
        response.get_data()
        assert response.status_code == 200, path


TEXT = {"type": "string"}
# Typed as what the page expects, or any text: typed values reach the edges (integers of
# any size, dates of year 1 to 9999 in any zone) far more often than random text does.
NUMBER = {"anyOf": [{"type": "integer", "minimum": -(10**30), "maximum": 10**30}, TEXT]}
DATE = {"anyOf": [{"type": "string", "format": "date"}, TEXT]}
DATE_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, TEXT]}
SCHEMAS = {
    "code": NUMBER,
    "size": NUMBER,
    "from": DATE,
    "to": DATE,
    "start": DATE_TIME,
    "end": DATE_TIME,
    "reprocessed": NUMBER,
}


def _params(*names: str, after=TEXT) -> list:
    return [
        {
            "name": n,
            "in": "query",
            "required": False,
            "schema": after if n == "after" else SCHEMAS.get(n, TEXT),
        }
        for n in names
    ]


FILTERS = ("status", "phone", "code", "q", "from", "to", "anomaly")


def _page(*names: str, statuses=("200", "400"), after=TEXT) -> dict:
    return {
        "get": {
            "parameters": _params(*names, after=after),
            "responses": {s: {"description": s} for s in statuses},
        }
    }


DASHBOARD = {
    "openapi": "3.1.0",
    "info": {"title": "viberwatch dashboard query arguments", "version": "1"},
    "paths": {
        # The messages page sends a form submit with empty fields to its canonical URL.
        "/": _page(*FILTERS, "size", "after", "before", statuses=("200", "302", "400")),
        "/analytics": _page(*FILTERS, "range", "start", "end"),
        "/analytics/data.json": _page(*FILTERS, "range", "start", "end"),
        "/export.csv": _page(*FILTERS, "kind"),
        "/rejected": _page("after", "reprocessed", after=NUMBER),
        "/conversations": _page("phone", "after"),
    },
}
dashboard = schemathesis.openapi.from_dict(DASHBOARD)


@dashboard.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzzed_dashboard_arguments_never_break_a_page(case, app, client, live_server):
    """Signed in, any value of any argument is a page or a 400, never a server error."""
    cookie = client.get_cookie("viberwatch_session").value
    case.call_and_validate(
        base_url=live_server.url,
        cookies={"viberwatch_session": cookie},
        allow_redirects=False,
        checks=[checks.not_a_server_error, checks.status_code_conformance],
    )
