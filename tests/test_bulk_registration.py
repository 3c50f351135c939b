"""Many registrations at once: a JSON array or NDJSON to POST /api/messages, each answered in
order with its own outcome (a bad one rejects none of the others, and is kept); the
`import-sends` command for a sending system's log; and tags, which only grow, filter the
messages page and the export, and show on both."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

from app.records.models import Message, MessageTag, RawBody, db
from support.bodies import REGISTER, encoded, post_json, receipt, registration

NDJSON = "application/x-ndjson"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def rows(app, model, *where):
    with app.app_context():
        try:
            found = db.session.execute(db.select(model).where(*where)).scalars().all()
            for row in found:
                db.session.expunge(row)
            return found
        finally:
            db.session.remove()


def test_a_mixed_batch_gets_one_answer_per_item_in_order(app, anon_client, api_token):
    batch = [
        registration("bulk-1", "+10000000001", "one"),
        registration("bulk-2", "+10000000002", "two", tags=["spring"]),
        registration("bulk-1", "+10000000001", "one"),  # the same again
        {"requestId": "bulk-3"},  # no phone
        "not an object",
        registration("bulk-4", "+10000000004", "four", tags=["a", "b", "c", "d", "e", "f"]),
    ]
    answer = post_json(anon_client, REGISTER, batch, headers=bearer(api_token))
    assert answer.status_code == 200
    got = answer.get_json()
    assert [(o["index"], o["outcome"], o["status"]) for o in got["outcomes"]] == [
        (0, "accepted", 201),
        (1, "accepted", 201),
        (2, "duplicate", 200),
        (3, "rejected", 422),
        (4, "rejected", 422),
        (5, "rejected", 422),
    ]
    assert got["outcomes"][3]["field"] == "phone"
    assert got["outcomes"][5]["field"] == "tags"
    assert (got["accepted"], got["duplicate"], got["rejected"]) == (2, 1, 3)
    # Every item is kept, the rejected ones with their reasons.
    kept = rows(app, RawBody, RawBody.endpoint == "register")
    assert len(kept) == 6
    assert sorted(r.outcome for r in kept) == ["accepted"] * 2 + ["duplicate"] + ["rejected"] * 3
    assert {m.request_id: m.tags for m in rows(app, Message)} == {
        "bulk-1": None,
        "bulk-2": "spring",
    }


def test_ndjson_lines_are_kept_as_they_came(app, anon_client, api_token):
    lines = [
        encoded(registration("nd-1", "+10000000011", "hi")),
        b'{"requestId": "nd-2",   "phone": "+10000000012"}',
        b"{not json",
    ]
    answer = anon_client.post(
        REGISTER, data=b"\n".join(lines) + b"\n", content_type=NDJSON, headers=bearer(api_token)
    )
    assert answer.status_code == 200
    assert [o["outcome"] for o in answer.get_json()["outcomes"]] == [
        "accepted",
        "accepted",
        "rejected",
    ]
    bodies = sorted(bytes(r.body) for r in rows(app, RawBody))
    assert bodies == sorted(lines)


def test_more_than_the_batch_limit_is_refused(app_config, anon_client, app, api_token):
    app.config["REGISTER_BATCH_MAX"] = 3
    batch = [registration(f"lim-{i}", "+1000000", "x") for i in range(4)]
    answer = post_json(anon_client, REGISTER, batch, headers=bearer(api_token))
    assert answer.status_code == 413 and answer.get_json()["field"] == "body"
    assert rows(app, Message) == []


def test_a_big_batch_beyond_the_single_body_limit_is_taken(app, anon_client, api_token):
    batch = [registration(f"big-{i:05d}", f"+1{i:010d}", "t" * 100) for i in range(3000)]
    assert len(json.dumps(batch)) > app.config["MAX_CONTENT_LENGTH"]
    answer = post_json(anon_client, REGISTER, batch, headers=bearer(api_token))
    assert answer.status_code == 200 and answer.get_json()["accepted"] == 3000
    assert len(rows(app, Message)) == 3000


def test_a_single_body_over_its_limit_is_kept_refused(app, anon_client, api_token):
    one = registration("huge-1", "+10000000099", "x" * (300 * 1024))
    answer = post_json(anon_client, REGISTER, one, headers=bearer(api_token))
    assert answer.status_code == 413
    (kept,) = rows(app, RawBody)
    assert kept.outcome == "refused" and kept.http_status == 413


def test_tags_only_grow_and_registration_order_against_receipts_does_not_matter(
    app, anon_client, api_token
):
    h = bearer(api_token)
    assert post_json(anon_client, "/webhooks/viber/dr", receipt("tg-1", "seen")).status_code == 200
    first = registration("tg-1", "+10000000021", "hello", tags=["Promo"])
    later = registration("tg-1", "+10000000021", "hello", tags=["promo", "may"])
    assert post_json(anon_client, REGISTER, first, headers=h).get_json()["outcome"] == "accepted"
    assert post_json(anon_client, REGISTER, later, headers=h).get_json()["outcome"] == "accepted"
    # A later registration without tags removes none.
    plain = registration("tg-1", "+10000000021", "hello")
    assert post_json(anon_client, REGISTER, plain, headers=h).get_json()["outcome"] == "duplicate"
    (m,) = rows(app, Message)
    assert (m.status, m.tags) == ("seen", "may,promo")
    assert sorted(t.tag for t in rows(app, MessageTag)) == ["may", "promo"]


def test_the_messages_page_and_the_export_filter_by_tag_and_appkey(app, client, api_token):
    h = bearer(api_token)
    for rid, tags, appkey in (
        ("f-1", ["spring"], "APP1"),
        ("f-2", ["spring", "vip"], "APP2"),
        ("f-3", ["autumn"], "APP1"),
    ):
        body = registration(rid, "+10000000031", "t", tags=tags, appkey=appkey)
        assert post_json(client, REGISTER, body, headers=h).status_code == 201
    page = client.get("/?tag=spring").get_data(as_text=True)
    assert "msg-f-1" in page and "msg-f-2" in page and "msg-f-3" not in page
    assert 'href="/?tag=vip"' in page  # tags show as links to their filter
    both = client.get("/?tag=spring&tag=vip").get_data(as_text=True)
    assert "msg-f-2" in both and "msg-f-1" not in both
    by_appkey = client.get("/?appkey=APP1").get_data(as_text=True)
    assert "msg-f-1" in by_appkey and "msg-f-3" in by_appkey and "msg-f-2" not in by_appkey
    exported = client.get("/export.csv?tag=spring").get_data(as_text=True).lstrip("\ufeff")
    table = list(csv.DictReader(exported.splitlines()))
    assert sorted((r["request_id"], r["tags"], r["appkey"]) for r in table) == [
        ("f-1", "spring", "APP1"),
        ("f-2", "spring,vip", "APP2"),
    ]
    bad = client.get("/?tag=" + "x" * 129, headers={"Accept": "application/json"})
    assert bad.status_code == 400
    shown = client.get("/messages/f-2").get_data(as_text=True)
    assert ">vip</a>" in shown and "APP2" in shown
    api = client.get("/api/messages/f-2", headers=h).get_json()
    assert (api["tags"], api["appkey"]) == (["spring", "vip"], "APP2")


def test_import_sends_registers_a_log_and_writes_the_rejected_lines(app, tmp_path):
    log = tmp_path / "sends.csv"
    log.write_text(
        "requestId,phone,text,appkey,functionType,rateType,tags,sentAt\n"
        'imp-1,+10000000041,hello,APP1,text,Promotional,"spring,vip",2026-11-01T10:00:00Z\n'
        "imp-2,+10000000042,,APP1,text,,,2026-11-01 10:05:00\n"
        "imp-3,,no phone,APP1,text,,,\n"
        "imp-4,+10000000044,bad time,APP1,text,,,yesterday\n",
        encoding="utf-8",
    )
    out = app.test_cli_runner().invoke(args=["import-sends", str(log)])
    assert out.exit_code == 0, out.output
    assert "2 accepted, 2 rejected" in out.output
    rejected = list(csv.reader((tmp_path / "sends.csv.rejected.csv").open(encoding="utf-8")))
    assert rejected[0] == ["line", "reason", "text"]
    assert [(r[0], r[1].split(":")[0]) for r in rejected[1:]] == [("4", "phone"), ("5", "sentAt")]
    m = {m.request_id: m for m in rows(app, Message)}
    assert (m["imp-1"].tags, m["imp-1"].rate_type) == ("spring,vip", "Promotional")
    assert m["imp-1"].registered_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert m["imp-2"].registered_at == datetime(2026, 11, 1, 10, 5, tzinfo=UTC)


def test_import_sends_takes_ndjson_too(app, tmp_path):
    log = tmp_path / "sends.ndjson"
    log.write_text(
        json.dumps({"requestId": "nd-imp-1", "phone": "+1000", "tags": ["x"]})
        + "\n"
        + json.dumps({"requestId": "nd-imp-2", "phone": "+1001", "sentAt": "2026-11-02T00:00:00"})
        + "\n[]\n",
        encoding="utf-8",
    )
    out = app.test_cli_runner().invoke(args=["import-sends", str(log)])
    assert "2 accepted, 1 rejected" in out.output, out.output
    assert {m.request_id for m in rows(app, Message)} == {"nd-imp-1", "nd-imp-2"}
