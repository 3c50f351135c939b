"""Hostile input changes nothing and crashes nothing: through real HTTP every bad body gets a
4xx naming the problem and is stored (rejected or refused), fields reach pages escaped,
CSV cells cannot start formulas, and filters cannot inject SQL. Hypothesis drives the
payload parsers."""

import json
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.payloads import (
    MAX_DEPTH,
    Invalid,
    parse_json_object,
    parse_receipt,
    parse_registration,
    parse_reply,
)
from app.records.models import Message, RawBody, Reply, db
from support.bodies import encoded, receipt
from support.fixtures import fixture_json

LIMIT = 65536
DR = "/webhooks/viber/dr"
REPLY = "/webhooks/viber/message"
JSON = {"Content-Type": "application/json"}
RID = "f6a7d49946094857ae02812969a83056"


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MAX_CONTENT_LENGTH": LIMIT}


def stored(app):
    with app.app_context():
        raws = db.session.execute(db.select(RawBody).order_by(RawBody.id)).scalars().all()
        messages = db.session.execute(db.select(db.func.count(Message.request_id))).scalar_one()
        db.session.expunge_all()
        return raws, messages


def assert_kept(app, response, status, field, body: bytes, outcome="rejected"):
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    raws, messages = stored(app)
    assert raws[-1].outcome == outcome and raws[-1].http_status == status
    assert raws[-1].body == body
    assert messages == 0


def test_body_over_the_limit_is_413_and_its_head_kept(app, live_server):
    body = encoded(receipt(RID, padding="x" * (3 * LIMIT)))
    response = httpx.post(live_server.url + DR, content=body, headers=JSON)
    assert response.status_code == 413 and response.json()["field"] == "body"
    raws, messages = stored(app)
    assert raws[-1].outcome == "refused" and raws[-1].body == body[:LIMIT]
    assert f"body of {len(body)} bytes" in raws[-1].reason and messages == 0


def test_chunked_body_over_the_limit_is_413_with_its_true_length(app, live_server):
    body = encoded(receipt(RID, padding="y" * (2 * LIMIT)))
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
    response = httpx.post(live_server.url + DR, content=chunks, headers=JSON)
    assert response.status_code == 413
    raws, _ = stored(app)
    assert raws[-1].body == body[:LIMIT] and f"body of {len(body)} bytes" in raws[-1].reason


def test_chunked_body_within_the_limit_is_applied(app, live_server):
    body = encoded(receipt(RID))
    response = httpx.post(live_server.url + DR, content=iter([body[:10], body[10:]]), headers=JSON)
    assert response.status_code == 200
    assert stored(app)[1] == 1


def test_api_body_over_the_limit_is_413(app, live_server, api_token):
    body = json.dumps({"requestId": RID, "phone": "1", "text": "z" * (2 * LIMIT)}).encode()
    response = httpx.post(
        live_server.url + "/api/messages",
        content=body,
        headers={**JSON, "Authorization": f"Bearer {api_token}"},
    )
    assert response.status_code == 413
    raws, messages = stored(app)
    assert raws[-1].endpoint == "register" and raws[-1].body == body[:LIMIT] and messages == 0


HOSTILE = [
    (
        "deep nesting",
        encoded(receipt(RID, extra=json.loads("[" * 40 + "]" * 40))),
        400,
        "body",
    ),
    ("deeper than the parser", b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}", 400, "body"),
    ("huge number", b'{"status":"delivered","code":' + b"9" * 5000 + b"}", 400, "body"),
    ("invalid UTF-8", b'{"status":"delivered","requestId":"\xff\xfe"}', 400, "body"),
    ("raw NUL byte", b'{"status":"deliv\x00ered"}', 400, "body"),
    ("escaped NUL", encoded(receipt("abc\u0000def")), 422, "requestId"),
    ("lone surrogate", b'{"status":"delivered","x":"\\ud800"}', 400, "body"),
    ("NaN", b'{"status":"delivered","code":NaN}', 400, "body"),
    ("empty", b"", 400, "body"),
    ("array", b"[1, 2]", 422, "body"),
    ("null", b"null", 422, "body"),
    ("number for a string", encoded(receipt(12345)), 422, "requestId"),
    ("text for a number", encoded(receipt(RID, code="11001x")), 422, "code"),
    ("bool for a number", encoded(receipt(RID, code=True)), 422, "code"),
    ("object for a string", encoded({**receipt(RID), "status": {"$ne": 1}}), 422, "status"),
    ("out of range", encoded(receipt(RID, code=2**40)), 422, "code"),
    ("infinite cost", encoded(receipt(RID, cost={"localPrice": 1e308 * 10})), 400, "body"),
    ("huge cost", encoded(receipt(RID, cost={"localPrice": 1e300})), 422, "cost.localPrice"),
]


@pytest.mark.parametrize("name,body,status,field", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_receipt_bodies(app, live_server, name, body, status, field):
    response = httpx.post(live_server.url + DR, content=body, headers=JSON)
    assert_kept(app, response, status, field, body)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_wrong_content_types_are_415(app, live_server, content_type):
    body = encoded(receipt(RID))
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(live_server.url + DR, content=body, headers=headers)
    assert_kept(app, response, 415, "Content-Type", body)


def test_hostile_reply_types(app, live_server):
    reply = fixture_json("reply_text")
    for override, field in (
        ({"phone": 79100000030}, "phone"),
        ({"message": "hi"}, "message"),
        ({"message": {"text": ["a"]}}, "message.text"),
        ({"message": {}}, "message"),
        ({"traceRequestId": None}, "traceRequestId"),
    ):
        body = json.dumps({**reply, **override}).encode()
        assert_kept(
            app, httpx.post(live_server.url + REPLY, content=body, headers=JSON), 422, field, body
        )


SCRIPTS = [
    '<script>alert("x")</script>',
    '"><img src=x onerror=alert(1)>',
    "{{7*7}}",
    "</textarea><svg onload=alert(1)>",
]


def test_every_field_reaching_a_page_is_escaped(app, client):
    payload = SCRIPTS[0] + SCRIPTS[1]
    phone = '7<b>91</b>"x'
    body = {
        "phone": phone,
        "appkey": payload,
        "traceRequestId": RID + "<i>",
        "message": {"text": payload, "media": "javascript:alert(1)", "fileName": payload + ".jpg"},
        "sendTime": "2023-07-17 14:40:50",
    }
    assert client.post(REPLY, json=body).status_code == 200
    data_url = {
        **body,
        "message": {"media": "data:text/html,<script>alert(1)</script>", "fileName": "a.png"},
        "sendTime": "2023-07-17 14:40:51",
    }
    assert client.post(REPLY, json=data_url).status_code == 200
    pages = [
        client.get(path).get_data(as_text=True)
        for path in ("/", "/conversations", f"/messages/{RID}<i>", "/conversations/" + phone)
    ]
    for html in pages:
        for raw in ("<script>alert", "<img src=x", "<svg", "<b>91</b>", "<i>"):
            assert raw not in html, raw
        assert (
            'href="javascript:' not in html
            and 'href="data:' not in html
            and 'src="data:' not in html
        )
    thread = pages[-1]
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in thread
    assert "no link: not an http(s) address" in thread


def test_csv_cells_cannot_start_formulas(app, client):
    reply = {**fixture_json("reply_text"), "message": {"text": '=HYPERLINK("http://evil","x")'}}
    client.post(REPLY, json=reply)
    client.post(
        "/api/messages", json={"requestId": "r-csv", "phone": "+79100000030", "text": "@SUM(A1)"}
    )
    replies = client.get("/export.csv?kind=replies").get_data(as_text=True)
    messages = client.get("/export.csv").get_data(as_text=True)
    assert "'=HYPERLINK" in replies and ",=HYPERLINK" not in replies
    assert "'+79100000030" in messages


INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE message; --",
    '" OR 1=1 --',
    "%' OR 1=1 --",
    "_%",
    "\\",
    "a\x00b",
    "\U0010ffff",
    "1 UNION SELECT password_hash FROM app_user",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_filters_cannot_inject_sql(app, client, value):
    client.post("/api/messages", json={"requestId": RID, "phone": "79100000030"})
    for path in ("/", "/export.csv", "/conversations"):
        for name in ("q", "phone", "code", "status", "from", "to"):
            response = client.get(path, query_string={name: value})
            assert response.status_code in (200, 400), (path, name, response.status_code)
            if response.status_code == 200 and name in ("q", "phone"):
                # Nothing matches: the quote did not turn into "every row".
                text = response.get_data(as_text=True)
                assert f'id="msg-{RID}"' not in text and f"{RID}," not in text, (path, name)
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(Message.request_id))).scalar_one() == 1
        assert db.session.execute(db.text("SELECT count(*) FROM app_user")).scalar_one() == 1


@pytest.mark.parametrize(
    "path",
    [
        "/conversations/79%00100",
        "/messages/abc%00def",
        "/?q=a%00b",
        "/conversations?after=MjAyNC0wMS0wMVQwMDowMDowMAphAGI",
    ],
)
def test_nul_in_a_url_is_a_clean_400(client, path):
    response = client.get(path)
    assert response.status_code == 400


# --- the parsers, driven by Hypothesis --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
near_receipts = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["success", "delivered", "seen", "failed", "expired", "read"])
        | json_values,
        "requestId": st.text(max_size=200) | json_values,
        "code": st.integers() | json_values,
        "message": st.text() | json_values,
        "sendTime": st.sampled_from(
            ["2023-07-13 15:12:11", "2023-02-30 10:00:00", "2023-07-13T15:12:11"]
        )
        | st.text(),
        "cost": st.dictionaries(
            st.sampled_from(["currency", "localPrice", "rateType"]), json_values
        )
        | json_values,
    },
)
PARSERS = [
    lambda d: parse_receipt(d, __import__("datetime").timezone.utc),
    lambda d: parse_reply(d, __import__("datetime").timezone.utc),
    parse_registration,
]


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300) | st.text(alphabet=string.printable, max_size=200).map(str.encode),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", None]
    ),
)
def test_parse_json_object_returns_an_object_or_says_why(body, content_type):
    try:
        data = parse_json_object(body, content_type)
    except Invalid as exc:
        assert exc.status in (400, 415, 422) and exc.field and exc.reason
    else:
        assert isinstance(data, dict)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # storable and hashable


@settings(max_examples=300, deadline=None)
@given(
    data=near_receipts | st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    which=st.integers(0, 2),
)
def test_parsers_accept_or_reject_without_crashing(data, which):
    try:
        parsed = PARSERS[which](data)
    except Invalid as exc:
        assert exc.status == 422 and exc.field and exc.reason
    else:
        for value in vars(parsed).values():
            if isinstance(value, str):
                assert "\x00" not in value
        assert len(parsed.content_hash) == 64


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(1, 200))
def test_nesting_limit_is_exact(depth):
    body = ('{"a":' + "[" * depth + "]" * depth + "}").encode()
    if depth + 1 <= MAX_DEPTH:
        assert parse_json_object(body, "application/json")
    else:
        with pytest.raises(Invalid):
            parse_json_object(body, "application/json")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(min_size=1, max_size=60))
def test_any_reply_text_is_stored_exactly_or_refused(app, client, text):
    """Whatever the words, they come back from the API exactly as sent, or a 4xx says why."""
    body = {**fixture_json("reply_text"), "message": {"text": text}}
    response = client.post(REPLY, data=json.dumps(body), content_type="application/json")
    assert response.status_code in (200, 400, 422)
    if response.status_code == 200:
        with app.app_context():
            texts = db.session.execute(db.select(Reply.text)).scalars().all()
        assert text in texts
