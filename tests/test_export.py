"""CSV export: columns, the page's filters, formula neutralisation, streaming, and the same
bytes from SQLite and PostgreSQL."""

import csv
import io
import os
import re
import sys
import unicodedata
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Numeric, literal

from app import create_app
from app.core.times import utcnow
from app.dashboard.export import (
    BLANKS,
    FORMULA_TRIGGERS,
    MESSAGE_COLUMNS,
    REPLY_COLUMNS,
    price_cell,
)
from app.records.models import Message, RawBody, Reply, db
from support.accounts import create_test_user, log_in
from support.dashboard_data import message_with, receipt, register, reply
from support.postgres import postgres_schema


def read_csv(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text[1:])))


def test_message_columns_and_values(client):
    register(client, "exp-1", "79100000001", text="hello")
    receipt(
        client,
        "exp-1",
        "success",
        cost={
            "currency": "USD",
            "localPrice": 0.05,
            "originalPrice": 0.04,
            "rateType": "Transactional",
        },
    )
    receipt(client, "exp-1", "delivered")
    reply(client, "exp-1", "79100000001", text="thanks")
    response = client.get("/export.csv")
    assert response.mimetype == "text/csv"
    header = response.get_data(as_text=True)[1:].splitlines()[0]
    assert header.split(",") == list(MESSAGE_COLUMNS)
    for required in (
        "request_id",
        "phone",
        "status",
        "code",
        "code_message",
        "send_time",
        "accepted_at",
        "delivered_at",
        "seen_at",
        "expired_at",
        "failed_at",
        "cost_currency",
        "local_price",
        "original_price",
        "rate_type",
        "replies",
        "last_reply_text",
    ):
        assert required in MESSAGE_COLUMNS
    (row,) = read_csv(response)
    assert row["request_id"] == "exp-1" and row["phone"] == "79100000001"
    assert row["status"] == "delivered" and row["code"] == "11001"
    assert (
        row["cost_currency"] == "USD"
        and row["local_price"] == "0.05"
        and row["rate_type"] == "Transactional"
    )
    assert row["replies"] == "1" and row["last_reply_text"] == "thanks"
    assert row["send_time"] == "2024-05-01T02:00:00Z"  # sendTime in UTC+08:00, shown in UTC
    assert row["accepted_at"].endswith("Z") and row["seen_at"] == ""


def test_dated_file_name(client):
    response = client.get("/export.csv?kind=replies")
    today = utcnow().date().isoformat()
    assert (
        response.headers["Content-Disposition"]
        == f'attachment; filename="viberwatch-replies-{today}.csv"'
    )
    assert (
        client.get("/export.csv")
        .headers["Content-Disposition"]
        .endswith(f'filename="viberwatch-messages-{today}.csv"')
    )


def test_same_filters_as_the_page(client):
    message_with(client, "f-seen", "seen", phone="79100000001")
    message_with(client, "f-failed", "failed", phone="79200000002")
    message_with(client, "f-seen2", "seen", phone="79200000003")
    message_with(client, "f-pending", None, phone="79200000004")
    assert [r["request_id"] for r in read_csv(client.get("/export.csv?status=seen"))] == [
        "f-seen2",
        "f-seen",
    ]
    assert [
        r["request_id"]
        for r in read_csv(client.get("/export.csv?phone=792&status=seen&status=pending"))
    ] == ["f-pending", "f-seen2"]
    assert [r["status"] for r in read_csv(client.get("/export.csv?q=f-p"))] == ["pending"]
    assert read_csv(client.get("/export.csv?code=1")) == []
    # The least code there is: PostgreSQL's COPY gets the value written into its SQL, where
    # "-2147483648::INTEGER" would be out of range.
    for kind in ("messages", "replies"):
        edge = client.get(f"/export.csv?kind={kind}&code=-2147483648&status=failed")
        assert edge.status_code == 200 and read_csv(edge) == []
    bad = client.get("/export.csv?status=read")
    assert bad.status_code == 400 and bad.get_json()["field"] == "status"
    assert client.get("/export.csv?kind=nope").get_json()["field"] == "kind"


def test_replies_export_follows_the_filter(client):
    reply(client, "r-1", "79100000001", text="first")
    reply(client, "r-2", "79200000002", media="https://x.example/a.png", file_name="a.png")
    receipt(client, "r-2", "seen")
    rows = read_csv(client.get("/export.csv?kind=replies"))
    assert list(rows[0]) == list(REPLY_COLUMNS)
    assert [r["trace_request_id"] for r in rows] == ["r-2", "r-1"]
    assert rows[0]["media"] == "https://x.example/a.png" and rows[0]["file_name"] == "a.png"
    assert (
        rows[1]["text"] == "first" and rows[1]["send_time"].endswith("Z") and rows[1]["received_at"]
    )
    only_seen = read_csv(client.get("/export.csv?kind=replies&status=seen"))
    assert [r["trace_request_id"] for r in only_seen] == ["r-2"]
    assert [r["phone"] for r in read_csv(client.get("/export.csv?kind=replies&phone=791"))] == [
        "79100000001"
    ]


def test_formula_cells_are_neutralised(client):
    hostile = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]
    for i, text in enumerate(hostile):
        reply(client, f"fx-{i}", "79100000001", text=text)
    reply(client, "fx-media", "=cmd|' /C calc'!A0", media="=1+1", file_name="@evil.png")
    rows = {r["request_id"]: r for r in read_csv(client.get("/export.csv"))}
    for i, text in enumerate(hostile):
        assert rows[f"fx-{i}"]["last_reply_text"] == "'" + text
    assert rows["fx-media"]["phone"] == "'=cmd|' /C calc'!A0"
    replies = {r["trace_request_id"]: r for r in read_csv(client.get("/export.csv?kind=replies"))}
    assert (
        replies["fx-media"]["media"] == "'=1+1" and replies["fx-media"]["file_name"] == "'@evil.png"
    )


BEHIND_BLANKS = [
    " =1+1",
    "\n=1+1",
    "\u00a0=1+1",
    "\uff1d1+1",
    "\uff0b1",
    "\uff0d1",
    "\uff201",
    "\u3000=1",
    "\u200b=1",
    "  \t-1",
    "\ufe66SUM(A1)",
    "\n\n@x",
]
HARMLESS = [
    "1-2",
    "a=b",
    "'quoted",
    "x@y.z",
    "   ",
    "plain text",
    "\u2212 minus sign is not a trigger",
]


def test_formula_cells_behind_blanks_or_full_width_are_neutralised(client):
    for i, text in enumerate(BEHIND_BLANKS + HARMLESS):
        reply(client, f"fb-{i:02d}", "79100000001", text=text)
    receipt(
        client,
        "fb-cost",
        "success",
        cost={
            "currency": "USD",
            "localPrice": -1.5,
            "originalPrice": 1,
            "rateType": "Transactional",
        },
    )
    rows = {r["request_id"]: r for r in read_csv(client.get("/export.csv"))}
    replies = {r["trace_request_id"]: r for r in read_csv(client.get("/export.csv?kind=replies"))}
    for i, text in enumerate(BEHIND_BLANKS):
        assert rows[f"fb-{i:02d}"]["last_reply_text"] == "'" + text
        assert replies[f"fb-{i:02d}"]["text"] == "'" + text
    for i, text in enumerate(HARMLESS, start=len(BEHIND_BLANKS)):
        assert rows[f"fb-{i:02d}"]["last_reply_text"] == text
        assert replies[f"fb-{i:02d}"]["text"] == text
    # A number is data, never a formula; a whole price is written as the float it is.
    assert rows["fb-cost"]["local_price"] == "-1.5" and rows["fb-cost"]["original_price"] == "1.0"


def test_trigger_and_blank_characters_are_complete():
    everything = [chr(i) for i in range(sys.maxunicode + 1) if not 0xD800 <= i <= 0xDFFF]
    triggers = {c for c in everything if unicodedata.normalize("NFKC", c) in ("=", "+", "-", "@")}
    assert set(FORMULA_TRIGGERS) == triggers | {"\t", "\r"}
    invisible = {c for c in everything if unicodedata.category(c) in ("Cf", "Zs", "Zl", "Zp", "Cc")}
    assert set(BLANKS) == (invisible | set(IGNORABLE_NOT_FORMAT)) - {"\t", "\r"}
    spaces = {c for c in everything if c.isspace()}
    assert spaces - {"\t", "\r"} <= set(BLANKS)
    assert not set(BLANKS) & set(FORMULA_TRIGGERS)


def code_points(*ranges: tuple[int, int]) -> list[str]:
    return [chr(i) for low, high in ranges for i in range(low, high + 1)]


# Unicode's Default_Ignorable_Code_Point outside Cf, as assigned: invisible, not "format".
IGNORABLE_NOT_FORMAT = code_points(
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
)
# The characters the rule names (a direction mark, an override, an isolate, the soft hyphen,
# the grapheme joiner, a Hangul filler, the emoji presentation selector, the tag space, and
# every default-ignorable one outside Cf), then more of each category: Arabic letter mark,
# language tag, line and paragraph separators, Mongolian vowel separator, byte order mark,
# word joiner, a musical beam, Kaithi number sign, controls of C0 and C1.
INVISIBLE = [
    "\u200e",
    "\u202e",
    "\u2066",
    "\u00ad",
    "\u034f",
    "\u3164",
    "\ufe0f",
    "\U000e0020",
    *IGNORABLE_NOT_FORMAT,
    "\u061c",
    "\U000e0001",
    "\u2028",
    "\u2029",
    "\u180e",
    "\ufeff",
    "\u2060",
    "\U0001d173",
    "\U000110bd",
    "\x01",
    "\x08",
    "\x1b",
    "\x7f",
    "\x85",
    "\x9f",
]


def invisible_characters(database_url: str) -> list[str]:
    # PostgreSQL text cannot hold U+0000 (and the webhooks refuse it on either database).
    return INVISIBLE + (["\x00"] if database_url.startswith("sqlite") else [])


def store_texts(app, texts: dict[str, str]) -> None:
    """Messages whose last reply is each text, keyed by request id: stored as given, whatever
    the webhooks would take."""
    now = utcnow()
    with app.app_context():
        db.session.execute(
            db.insert(Message),
            [
                {"request_id": r, "last_reply_text": t, "created_at": now, "last_activity_at": now}
                for r, t in texts.items()
            ],
        )
        db.session.commit()


def test_invisible_characters_before_a_trigger_are_blanks(app, client, database_url):
    hostile, harmless = {}, {}
    for i, blank in enumerate(invisible_characters(database_url)):
        for trigger in "=+-@":
            hostile[f"inv-{i:03d}-{trigger}"] = blank + trigger + "1+1"
        # Invisible, then text that is not a formula.
        harmless[f"inv-{i:03d}-text"] = blank + "plain"
        harmless[f"inv-{i:03d}-math"] = blank + "1-2"
    # A run of them, mixed with spaces.
    hostile["inv-run"] = "".join(INVISIBLE[:8]) + " \u00a0" + "".join(INVISIBLE[-8:]) + "=1"
    harmless["inv-run-text"] = "".join(INVISIBLE) + "x=1"
    if database_url.startswith("sqlite"):
        # SQLite's text functions cannot read past U+0000: whatever follows counts as a formula.
        hostile["inv-nul-text"] = harmless.pop(f"inv-{len(INVISIBLE):03d}-text")
        hostile["inv-nul-math"] = harmless.pop(f"inv-{len(INVISIBLE):03d}-math")
        hostile["inv-nul-later"] = "\u200e \x00plain"
    store_texts(app, hostile | harmless)
    rows = {r["request_id"]: r["last_reply_text"] for r in read_csv(client.get("/export.csv"))}
    assert {rid: rows[rid] for rid in hostile} == {rid: "'" + t for rid, t in hostile.items()}
    assert {rid: rows[rid] for rid in harmless} == harmless


def test_invisible_characters_before_a_trigger_through_the_webhooks(client):
    """The named characters in replies as NXCLOUD sends them, in both exports."""
    texts = {}
    for i, blank in enumerate(INVISIBLE[:8]):
        for trigger in "=+-@":
            texts[f"wi-{i}-{trigger}"] = blank + trigger + "SUM(A1)"
        texts[f"wi-{i}-text"] = blank + "hello"
    for rid, text in texts.items():
        reply(client, rid, "79100000001", text=text)
    expected = {rid: text if rid.endswith("-text") else "'" + text for rid, text in texts.items()}
    rows = read_csv(client.get("/export.csv"))
    assert {r["request_id"]: r["last_reply_text"] for r in rows} == expected
    replies = read_csv(client.get("/export.csv?kind=replies"))
    assert {r["trace_request_id"]: r["text"] for r in replies} == expected


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "1",
        "-7",
        "0.05",
        "0.000001",
        "0.000015",
        "-0.3",
        "0.1",
        "2.675",
        "999999999.999999",
        "1000000000.5",
        "123456789012.123456",
        "999999999999.999999",
        "-999999999999.999999",
        "100000000000",
    ],
)
def test_prices_read_as_python_writes_their_float(app, value):
    with app.app_context():
        cell = db.session.execute(
            db.select(price_cell(literal(Decimal(value), Numeric(18, 6))))
        ).scalar()
    # SQLite hands the float to the csv writer (which writes repr); PostgreSQL writes the text.
    assert (cell if isinstance(cell, str) else repr(cell)) == repr(float(Decimal(value)))


def test_export_is_streamed(client, app, monkeypatch):
    from app.dashboard import export

    for i in range(30):
        receipt(client, f"s-{i:02d}", "seen")
    # Small chunks, so 30 rows show the chunking.
    monkeypatch.setattr(export, "CHUNK", 7)
    response = client.get("/export.csv", buffered=False)
    assert response.is_streamed
    assert not isinstance(response.response, (list, tuple, bytes, str))
    chunks = list(response.response)
    # One chunk for the header, then one per 7 rows: never the whole file in one piece.
    assert len(chunks) == 1 + 5
    response.close()
    body = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode("utf-8-sig")
    assert len(body.splitlines()) == 31


def test_header_is_sent_before_the_query_runs(client, database_url):
    from sqlalchemy import create_engine, text

    receipt(client, "h-1", "seen")
    response = client.get("/export.csv", buffered=False)
    chunks = iter(response.response)
    # With the table gone the query cannot run at all, yet the download has begun.
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE message RENAME TO message_away"))
    try:
        assert next(chunks) == ("\ufeff" + ",".join(MESSAGE_COLUMNS) + "\r\n").encode()
        with pytest.raises(Exception, match="message"):
            next(chunks)
    finally:
        response.close()
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE message_away RENAME TO message"))
        engine.dispose()


def test_client_leaving_mid_export_leaves_the_database_usable(client, monkeypatch):
    from app.dashboard import export

    for i in range(30):
        receipt(client, f"gone-{i:02d}", "seen")
    monkeypatch.setattr(export, "CHUNK", 7)
    for kind in ("messages", "replies"):
        response = client.get(f"/export.csv?kind={kind}", buffered=False)
        chunks = iter(response.response)
        next(chunks)
        if kind == "messages":
            assert next(chunks).count(b"\r\n") == 7
        response.close()
    assert len(read_csv(client.get("/export.csv"))) == 30


def test_export_link_on_the_page_carries_filters(client):
    message_with(client, "link-1", "seen", phone="79100000001")
    html = client.get("/?status=seen&phone=791&size=25").get_data(as_text=True)
    href = re.search(r'id="export-link" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert href == "/export.csv?status=seen&phone=791"
    assert [r["request_id"] for r in read_csv(client.get(href))] == ["link-1"]


# Cells both databases store alike, and the ones a CSV writer or a spreadsheet trips on.
TRICKY = [
    "",
    " ",
    "=1+1",
    " =1+1",
    "\n=1+1",
    "\u00a0=1+1",
    "\uff1d1+1",
    "\\.",
    '"',
    '""',
    ",",
    "a,b",
    "\r\n",
    "\n",
    "\r",
    "-",
    "'",
    "\ufeff=1",
    "\u3164=1",
    "\u200e\U000e0020-1",
    "\u00ad\u2066 @x",
    "\ufe0fplain",
    "\u00e9",
    "\U0001f600",
    "NULL",
    "\\N",
    "x\ty",
]
texts = st.one_of(
    st.none(),
    st.sampled_from(TRICKY),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12),
)
times = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)
# PostgreSQL keeps 6 decimals and a float's 15 significant digits: prices within both.
prices = st.one_of(
    st.none(),
    st.sampled_from(
        [0.0, 1.0, 0.000001, 0.05, -0.3, 999999999.999999, 1e9, -123456789.5, 999999999999.0]
    ),
    st.decimals(-(10**9) + 1, 10**9 - 1, places=6, allow_nan=False, allow_infinity=False).map(
        float
    ),
    st.integers(-(10**12) + 1, 10**12 - 1).map(float),
)
STATUSES = [None, "success", "delivered", "seen", "failed", "expired"]


@st.composite
def records(draw):
    ids = draw(
        st.lists(
            st.text(min_size=1, max_size=12).filter(lambda t: "\x00" not in t)
            | st.sampled_from([t for t in TRICKY if t]),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    stamps = draw(st.lists(times, min_size=len(ids), max_size=len(ids), unique=True))
    messages = [
        dict(
            request_id=rid,
            phone=draw(texts),
            status=draw(st.sampled_from(STATUSES)),
            code=draw(st.none() | st.integers(-(2**31), 2**31 - 1)),
            code_message=draw(texts),
            send_time=draw(st.none() | times),
            accepted_at=draw(st.none() | times),
            delivered_at=draw(st.none() | times),
            seen_at=draw(st.none() | times),
            expired_at=draw(st.none() | times),
            failed_at=draw(st.none() | times),
            cost_currency=draw(texts),
            cost_local_price=draw(prices),
            cost_original_price=draw(prices),
            cost_rate_type=draw(texts),
            anomalies=draw(texts),
            anomaly=draw(st.booleans()),
            replies_count=draw(st.integers(0, 2**31 - 1)),
            last_reply_text=draw(texts),
            created_at=stamp,
            last_activity_at=stamp,
            appkey=draw(texts),
            tags=draw(texts),
        )
        for rid, stamp in zip(ids, stamps, strict=False)
    ]
    received = draw(st.lists(times, max_size=6, unique=True))
    replies = [
        dict(
            phone=draw(texts.filter(lambda t: t is not None)),
            trace_request_id=draw(st.sampled_from(ids) | texts.filter(lambda t: t is not None)),
            text=draw(texts),
            media=draw(texts),
            file_name=draw(texts),
            send_time=draw(times),
            received_at=at,
            content_hash=str(i),
            appkey="app",
            send_time_raw="raw",
        )
        for i, at in enumerate(received)
    ]
    return messages, replies


def documented_csv(columns, rows) -> bytes:
    """The export's format as docs/dashboard.md states it, written the plain Python way."""

    def cell(value):
        if isinstance(value, datetime):
            return value.isoformat().replace("+00:00", "Z")
        if isinstance(value, str) and value.lstrip(BLANKS)[:1] in FORMULA_TRIGGERS:
            return "'" + value
        return value  # None is written as nothing, a number as Python writes it

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([cell(v) for v in row] for row in rows)
    return ("\ufeff" + out.getvalue()).encode()


MESSAGE_FIELDS = (
    "request_id",
    "phone",
    "status",
    "code",
    "code_message",
    "send_time",
    "accepted_at",
    "delivered_at",
    "seen_at",
    "expired_at",
    "failed_at",
    "cost_currency",
    "cost_local_price",
    "cost_original_price",
    "cost_rate_type",
    "anomalies",
    "replies_count",
    "last_reply_text",
    "last_activity_at",
    "appkey",
    "tags",
)
REPLY_FIELDS = (
    "phone",
    "trace_request_id",
    "text",
    "media",
    "file_name",
    "send_time",
    "received_at",
)


@pytest.fixture
def twin_clients(request, tmp_path, app_config):
    """Signed-in clients of two apps with the same code, one on SQLite, one on PostgreSQL."""
    if not os.environ.get("TEST_DATABASE_URL"):
        if os.environ.get("CI") == "true":
            pytest.fail("TEST_DATABASE_URL must name a PostgreSQL database")
        pytest.skip("compares SQLite with PostgreSQL: set TEST_DATABASE_URL")
    with ExitStack() as stack:
        urls = (
            "sqlite:///" + str(tmp_path / "twin.db"),
            stack.enter_context(postgres_schema(request.getfixturevalue("postgres_admin"))),
        )
        twins = []
        for url in urls:
            app = create_app({**app_config, "SQLALCHEMY_DATABASE_URI": url})
            with app.app_context():
                db.create_all()
                db.session.add(
                    RawBody(
                        id=1,
                        endpoint="message",
                        received_at=utcnow(),
                        body=b"{}",
                        outcome="accepted",
                        http_status=200,
                    )
                )
                db.session.commit()
            create_test_user(app)
            twins.append((app, log_in(app, app.test_client())))
            stack.callback(dispose, app)
        yield twins


def dispose(app):
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


TWIN_URLS = (
    "/export.csv",
    "/export.csv?kind=replies",
    "/export.csv?status=pending&status=seen",
    "/export.csv?anomaly=1",
    "/export.csv?from=1970-01-01&to=2100-12-31",
    "/export.csv?kind=replies&status=success,delivered",
    "/export.csv?kind=replies&anomaly=1",
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=records())
def test_both_databases_write_the_documented_bytes(twin_clients, data):
    messages, replies = data
    outputs = []
    for app, client in twin_clients:
        with app.app_context():
            db.session.execute(db.delete(Reply))
            db.session.execute(db.delete(Message))
            db.session.execute(db.insert(Message), messages)
            if replies:
                db.session.execute(db.insert(Reply), [{**r, "raw_id": 1} for r in replies])
            db.session.commit()
        outputs.append([client.get(url).get_data() for url in TWIN_URLS])
    sqlite, postgresql = outputs
    for url, a, b in zip(TWIN_URLS, sqlite, postgresql, strict=False):
        assert a == b, url
    ordered = sorted(messages, key=lambda m: m["last_activity_at"], reverse=True)
    expected = documented_csv(
        MESSAGE_COLUMNS,
        [
            [m["status"] or "pending" if f == "status" else m[f] for f in MESSAGE_FIELDS]
            for m in ordered
        ],
    )
    assert sqlite[0] == expected
    ordered = sorted(replies, key=lambda r: r["received_at"], reverse=True)
    assert sqlite[1] == documented_csv(
        REPLY_COLUMNS, [[r[f] for f in REPLY_FIELDS] for r in ordered]
    )
