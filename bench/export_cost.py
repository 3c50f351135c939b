"""What each kind of cell costs the database in the messages export.

python bench/export_cost.py DATABASE_URL

Runs the export's own query (app.export.message_query, no filter) with every cell formatted,
then with one kind of cell (times, texts with their formula check, prices) left as stored,
then with all left as stored, and reads every row: SQLite in this process through the
driver, PostgreSQL as COPY ... TO STDOUT with a serial plan, so that all the work is in the
one server process whose CPU time is read from /proc (the server must run on this machine).
CPU seconds, best of 3. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROUNDS = 3


def backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(url: str) -> dict:
    os.environ["DATABASE_URL"] = url
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from app import create_app
    from app.dashboard.export import MESSAGE_CELLS, _driver_statement, iso_cell, price_cell
    from app.dashboard.filters import MessageFilter
    from app.records.models import Message

    stored = {
        "request_id": Message.request_id,
        "phone": Message.phone,
        "code_message": Message.code_message,
        "send_time": Message.send_time,
        "accepted_at": Message.accepted_at,
        "delivered_at": Message.delivered_at,
        "seen_at": Message.seen_at,
        "expired_at": Message.expired_at,
        "failed_at": Message.failed_at,
        "cost_currency": Message.cost_currency,
        "local_price": Message.cost_local_price,
        "original_price": Message.cost_original_price,
        "rate_type": Message.cost_rate_type,
        "anomalies": Message.anomalies,
        "last_reply_text": Message.last_reply_text,
        "last_activity_at": Message.last_activity_at,
    }

    def kind(name, cell):
        if name not in stored:
            return "other"
        return (
            "times"
            if isinstance(cell, iso_cell)
            else "prices"
            if isinstance(cell, price_cell)
            else "texts"
        )

    def query(raw: set):
        cells = [stored[name] if kind(name, cell) in raw else cell for name, cell in MESSAGE_CELLS]
        return MessageFilter().query().with_only_columns(*cells)

    variants = {
        "every cell formatted": set(),
        "times as stored": {"times"},
        "texts as stored": {"texts"},
        "prices as stored": {"prices"},
        "all as stored": {"times", "texts", "prices"},
    }
    app = create_app()
    with app.app_context():
        statements = {name: _driver_statement(query(raw)) for name, raw in variants.items()}
    best: dict[str, float] = {}
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite:///") :])

        def run(sql, params):
            start = time.process_time()
            cursor = conn.execute(sql, params)
            while cursor.fetchmany(1000):
                pass
            return time.process_time() - start
    else:
        import psycopg

        conn = psycopg.connect(
            url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        )
        conn.execute("SET max_parallel_workers_per_gather = 0")
        conn.execute("SET jit = off")
        conn.execute("SET extra_float_digits = 1")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

        def run(sql, params):
            start = backend_cpu(pid)
            with conn.cursor().copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", params) as copy:
                for _ in copy:
                    pass
            return backend_cpu(pid) - start

    for _ in range(ROUNDS):
        for name, (sql, params) in statements.items():
            took = run(sql, params)
            best[name] = min(best.get(name, took), took)
    conn.close()
    return {"cpu_seconds": best}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
