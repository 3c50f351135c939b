"""CSV export: columns, the page's filters, formula neutralisation, streaming."""
import csv
import io
import re

from app.export import MESSAGE_COLUMNS, REPLY_COLUMNS, neutralise
from app.models import utcnow
from dashboard_data import message_with, receipt, register, reply


def read_csv(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text[1:])))


def test_message_columns_and_values(client):
    register(client, "exp-1", "79100000001", text="hello")
    receipt(client, "exp-1", "success", cost={"currency": "USD", "localPrice": 0.05,
                                              "originalPrice": 0.04, "rateType": "Transactional"})
    receipt(client, "exp-1", "delivered")
    reply(client, "exp-1", "79100000001", text="thanks")
    response = client.get("/export.csv")
    assert response.mimetype == "text/csv"
    header = response.get_data(as_text=True)[1:].splitlines()[0]
    assert header.split(",") == list(MESSAGE_COLUMNS)
    for required in ("request_id", "phone", "status", "code", "code_message", "send_time", "accepted_at",
                     "delivered_at", "seen_at", "expired_at", "failed_at", "cost_currency", "local_price",
                     "original_price", "rate_type", "replies", "last_reply_text"):
        assert required in MESSAGE_COLUMNS
    (row,) = read_csv(response)
    assert row["request_id"] == "exp-1" and row["phone"] == "79100000001"
    assert row["status"] == "delivered" and row["code"] == "11001"
    assert row["cost_currency"] == "USD" and row["local_price"] == "0.05" and row["rate_type"] == "Transactional"
    assert row["replies"] == "1" and row["last_reply_text"] == "thanks"
    assert row["send_time"] == "2024-05-01T02:00:00Z"  # sendTime in UTC+08:00, shown in UTC
    assert row["accepted_at"].endswith("Z") and row["seen_at"] == ""


def test_dated_file_name(client):
    response = client.get("/export.csv?kind=replies")
    today = utcnow().date().isoformat()
    assert response.headers["Content-Disposition"] == f'attachment; filename="viberwatch-replies-{today}.csv"'
    assert client.get("/export.csv").headers["Content-Disposition"].endswith(
        f'filename="viberwatch-messages-{today}.csv"')


def test_same_filters_as_the_page(client):
    message_with(client, "f-seen", "seen", phone="79100000001")
    message_with(client, "f-failed", "failed", phone="79200000002")
    message_with(client, "f-seen2", "seen", phone="79200000003")
    message_with(client, "f-pending", None, phone="79200000004")
    assert [r["request_id"] for r in read_csv(client.get("/export.csv?status=seen"))] == ["f-seen2", "f-seen"]
    assert [r["request_id"] for r in read_csv(client.get("/export.csv?phone=792&status=seen&status=pending"))] \
        == ["f-pending", "f-seen2"]
    assert [r["status"] for r in read_csv(client.get("/export.csv?q=f-p"))] == ["pending"]
    assert read_csv(client.get("/export.csv?code=1")) == []
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
    assert rows[1]["text"] == "first" and rows[1]["send_time"].endswith("Z") and rows[1]["received_at"]
    only_seen = read_csv(client.get("/export.csv?kind=replies&status=seen"))
    assert [r["trace_request_id"] for r in only_seen] == ["r-2"]
    assert [r["phone"] for r in read_csv(client.get("/export.csv?kind=replies&phone=791"))] == ["79100000001"]


def test_formula_cells_are_neutralised(client):
    hostile = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]
    for i, text in enumerate(hostile):
        reply(client, f"fx-{i}", "79100000001", text=text)
    reply(client, "fx-media", "=cmd|' /C calc'!A0", media="=1+1", file_name="@evil.png")
    rows = {r["request_id"]: r for r in read_csv(client.get("/export.csv"))}
    for i, text in enumerate(hostile):
        assert rows[f"fx-{i}"]["last_reply_text"] == "'" + text
    assert rows["fx-media"]["phone"] == "'=cmd|' /C calc'!A0"
    replies = {r["trace_request_id"]: r for r in read_csv(client.get("/export.csv?kind=replies"))}
    assert replies["fx-media"]["media"] == "'=1+1" and replies["fx-media"]["file_name"] == "'@evil.png"
    assert neutralise("plain") == "plain" and neutralise(None) == "" and neutralise(-1.5) == "-1.5"


def test_export_is_streamed(client, app, monkeypatch):
    from app import export

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


def test_export_link_on_the_page_carries_filters(client):
    message_with(client, "link-1", "seen", phone="79100000001")
    html = client.get("/?status=seen&phone=791&size=25").get_data(as_text=True)
    href = re.search(r'id="export-link" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert href == "/export.csv?status=seen&phone=791"
    assert [r["request_id"] for r in read_csv(client.get(href))] == ["link-1"]
