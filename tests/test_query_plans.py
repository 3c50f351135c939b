"""Every query the messages page, its counters, a thread and a message page run is served by an
index: no full scan of a big table and no sort of all its rows, whatever the filter."""

import re

import pytest
from sqlalchemy import event, text

from app.core.services import services
from app.ops.seed import seed
from app.records.models import Message, db

BIG_TABLES = ("message", "receipt", "reply", "raw_body", "activity")
FILTERS = [
    "",
    "status=seen",
    "status=failed",
    "status=pending",
    "status=delivered&status=seen",
    "code=11003",
    "phone={phone}",
    "phone={phone_prefix}",
    "q={rid_prefix}",
    "from={day}&to={day}",
    "anomaly=1",
    "status=seen&from={day}&to={day}",
]


@pytest.fixture
def seeded(app):
    with app.app_context():
        seed(300, random_seed=11, days=10, zone=services(app).sendtime_zone)
        from app.records import tally

        tally.rebuild()
        m = db.session.execute(
            db.select(Message)
            .where(Message.replies_count > 0)
            .order_by(Message.request_id)
            .limit(1)
        ).scalar_one()
        return {
            "phone": m.phone,
            "phone_prefix": m.phone[:5],
            "rid": m.request_id,
            "rid_prefix": m.request_id[:4],
            "day": m.last_activity_at.date().isoformat(),
        }


def captured_selects(app, client, paths):
    """(path, statement, parameters) of every SELECT the pages ran, page and fragment."""
    statements = []
    current = [None]

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((current[0], statement, parameters))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        for path in paths:
            current[0] = path
            assert client.get(path).status_code == 200, path
            assert client.get(path, headers={"HX-Request": "true"}).status_code == 200, path
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return [(p, s, a) for p, s, a in statements if touches_big_table(s)]


def touches_big_table(statement: str) -> bool:
    return any(re.search(rf"\b(FROM|JOIN)\s+{t}\b", statement, re.I) for t in BIG_TABLES)


def sqlite_problems(conn, statement, parameters, filtered: bool) -> list[str]:
    plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
    # Sorting is fine after an index seek (a prefix range of phones or requestIds: only its
    # matches are sorted), not after reading a whole table. Walking a whole index in order
    # is fine for the unfiltered list (it stops after a page), not when a filter must skip rows.
    seeks = any(line.startswith("SEARCH ") for line in plan)
    tables = "|".join(BIG_TABLES)
    return [
        line
        for line in plan
        if re.match(rf"SCAN ({tables})$", line)
        or (filtered and re.match(rf"SCAN ({tables}) USING", line))
        or ("USE TEMP B-TREE FOR ORDER BY" in line and not seeks)
    ]


def postgres_problems(conn, statement, parameters, filtered: bool) -> list[str]:
    # With sequential scans priced out, a plan that still reads a big table whole, or (for a
    # filter) walks an index with no condition on it, has no index that serves the query.
    conn.exec_driver_sql("SET enable_seqscan = off")
    plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters)]
    conn.exec_driver_sql("RESET enable_seqscan")
    tables = "|".join(BIG_TABLES)
    bad = []
    for i, line in enumerate(plan):
        if re.search(rf"Seq Scan on ({tables})\b", line):
            bad.append(line)
        elif filtered and re.search(
            rf"Index (Only )?Scan (Backward )?using \w+ on ({tables})\b", line
        ):
            details = []
            for following in plan[i + 1 :]:
                if "->" in following:
                    break
                details.append(following)
            if not any("Index Cond" in d for d in details):
                bad.append(line)
    return bad


def problems_of(app, statements) -> dict:
    problems = {}
    with app.app_context(), db.engine.connect() as conn:
        check = sqlite_problems if conn.dialect.name == "sqlite" else postgres_problems
        for path, statement, parameters in statements:
            bad = check(conn, statement, parameters, filtered=path not in ("/", "/conversations"))
            if bad:
                problems[(path, statement)] = bad
    return problems


def test_pages_use_indexes(app, client, seeded):
    paths = ["/?" + f.format(**seeded) if f else "/" for f in FILTERS]
    paths += [f"/conversations/{seeded['phone']}", f"/messages/{seeded['rid']}", "/conversations"]
    statements = captured_selects(app, client, paths)
    assert {p for p, _, _ in statements} >= set(paths) - {"/conversations"}
    assert problems_of(app, statements) == {}


def test_a_missing_index_is_caught(app, client, seeded):
    # The check can fail: without the code index, a code filter walks the whole table.
    with app.app_context():
        db.session.execute(text("DROP INDEX ix_message_code_activity"))
        db.session.commit()
    statements = captured_selects(app, client, ["/?code=11003"])
    assert any("message.code" in statement for _, statement in problems_of(app, statements))


def test_ingest_reads_by_a_list_of_ids_go_by_index_however_the_table_grew(app):
    """A batch reads its messages' receipts by a list of ids. On PostgreSQL that read is planned
    for the ids each time, not kept as a prepared statement: its generic plan, chosen while the
    table was small, would go on scanning the table whole as it grows (a fresh database under
    load). On SQLite the same read goes by the request_id index."""
    from app.ingest.stored import RECEIPT_COLUMNS
    from app.records.models import Receipt
    from app.records.sqlutil import _reader, select_in

    with app.app_context():
        conn = db.session.connection()
        table = Receipt.__table__
        for i in range(12):  # more than the driver's prepare threshold
            select_in(conn, table, RECEIPT_COLUMNS, "request_id", [f"r{i}", f"s{i}"])
        sql, _, _ = _reader(conn.dialect.name, table, RECEIPT_COLUMNS, "request_id", False)
        if conn.dialect.name == "postgresql":
            prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements")
            assert sql.split("%(")[0] not in "\n".join(row[0] for row in prepared)
            plan = conn.exec_driver_sql(
                "EXPLAIN " + sql.replace("%(ids)s", "ARRAY['r1', 's1']")
            ).scalars()
            assert "ix_receipt_request_id" in "\n".join(plan)
        else:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ('["r1"]',)).all()
            assert "ix_receipt_request_id" in "\n".join(str(row) for row in plan)


def test_a_broad_prefix_walks_the_order_whatever_the_statistics(app, client, seeded, monkeypatch):
    """A prefix that matches many messages (here more than 10 of 300) is filtered while
    walking the order's index, with no sort, even with no planner statistics at all (as right
    after a bulk load): PostgreSQL's planner then took a country code for a narrow range and
    sorted every message it matched."""
    from app.dashboard import listing

    monkeypatch.setattr(listing, "BROAD_PREFIX", 10)
    with app.app_context():
        postgres = db.engine.dialect.name == "postgresql"
        if postgres:
            db.session.execute(
                text("DELETE FROM pg_statistic WHERE starelid = 'message'::regclass")
            )
        else:
            db.session.execute(text("ANALYZE sqlite_schema"))
            db.session.execute(text("DELETE FROM sqlite_stat1"))
        db.session.commit()
        engine = db.engine
    ran = []

    def record(conn, cursor, statement, parameters, context, executemany):
        ran.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        html = client.get("/?phone=7").get_data(as_text=True)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert html.count('<tr id="msg-') == 50
    listed = [
        (s, p) for s, p in ran if "FROM message" in s and "ORDER BY message.last_activity_at" in s
    ]
    assert len(listed) == 1
    statement, parameters = listed[0]
    with app.app_context(), db.engine.connect() as conn:
        if postgres:
            # The page and its counters read in one walk: the settings set once, and both
            # statements run under them.
            statements = [s for s, _ in ran]
            assert statements.count(listing.WALK) == statements.count(listing.UNWALK) == 1
            walk, unwalk = statements.index(listing.WALK), statements.index(listing.UNWALK)
            counted = [i for i, s in enumerate(statements) if "GROUP BY anon_1.s" in s]
            assert counted and walk < statements.index(statement) < unwalk
            assert all(walk < i < unwalk for i in counted), statements
            conn.exec_driver_sql(listing.WALK.replace("LOCAL ", ""))
            plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters)]
        else:
            plan = [
                row[-1]
                for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            ]
    text_plan = "\n".join(plan)
    assert "ix_message_activity" in text_plan, text_plan
    assert "Sort" not in text_plan and "TEMP B-TREE" not in text_plan, text_plan
