"""One export, in a process of its own so its memory is its own.

python bench/export_child.py app DATABASE_URL USER PASSWORD [QUERY]  # GET /export.csv[?QUERY]
python bench/export_child.py bare SQLITE_PATH        # sqlite3 + csv, nothing else
python bench/export_child.py copy POSTGRESQL_URL     # COPY ... TO STDOUT WITH CSV, read by psycopg
Prints one JSON line: rows, seconds (and this process's CPU seconds), bytes, first byte and
first row (ms), resident memory before and the most seen during.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import sqlite3
import sys
import time

# The same rows and columns as the app's export, in the same order, as they are stored.
COLUMNS = (
    "request_id, phone, COALESCE(status, 'pending'), code, code_message, send_time, accepted_at, "
    "delivered_at, seen_at, expired_at, failed_at, cost_currency, cost_local_price, "
    "cost_original_price, cost_rate_type, anomalies, replies_count, last_reply_text, last_activity_at"
)
QUERY = f"SELECT {COLUMNS} FROM message ORDER BY last_activity_at DESC, request_id DESC"
SAMPLE_ROWS = 10_000


class Sink:
    """A file that counts what is written to it and keeps nothing."""

    def __init__(self):
        self.bytes = 0

    def write(self, text: str) -> int:
        self.bytes += len(text)
        return len(text)


def rss_kb() -> int:
    """Resident memory now (the peak so far would hide growth behind earlier spikes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


class Watch:
    """Times from the start to the first byte, the first row and the end, and memory meanwhile
    (sampled every SAMPLE_ROWS rows, so that the sampling costs the loops next to nothing)."""

    def __init__(self):
        self.before = self.highest = rss_kb()
        self.start = time.perf_counter()
        self.cpu = time.process_time()
        self.first_byte = self.first_row = None

    def first(self, has_row: bool) -> None:
        now = time.perf_counter()
        if self.first_byte is None:
            self.first_byte = now
        if has_row and self.first_row is None:
            self.first_row = now

    def sample(self) -> None:
        self.highest = max(self.highest, rss_kb())

    def result(self, rows: int, size: int) -> dict:
        seconds = time.perf_counter() - self.start
        return {
            "rows": rows,
            "seconds": seconds,
            "cpu_seconds": time.process_time() - self.cpu,
            "bytes": size,
            "first_byte_ms": (self.first_byte - self.start) * 1000 if self.first_byte else None,
            "first_row_ms": (self.first_row - self.start) * 1000 if self.first_row else None,
            "rss_before_kb": self.before,
            "rss_peak_kb": max(self.highest, rss_kb()),
        }


def bare(path: str) -> dict:
    conn = sqlite3.connect(path)
    sink = Sink()
    writer = csv.writer(sink, lineterminator="\r\n")
    watch = Watch()
    rows = 0
    for row in conn.execute(QUERY):
        writer.writerow(row)
        rows += 1
        if rows % SAMPLE_ROWS == 1:
            watch.first(True)
            watch.sample()
    return watch.result(rows, sink.bytes)


def copy(url: str) -> dict:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        watch = Watch()
        rows = size = 0
        with cursor.copy(f"COPY ({QUERY}) TO STDOUT WITH (FORMAT csv)") as out:
            for data in out:
                rows += 1
                size += len(data)
                if rows % SAMPLE_ROWS == 1:
                    watch.first(True)
                    watch.sample()
        return watch.result(rows, size)


def app_export(url: str, user: str, password: str, query: str = "") -> dict:
    os.environ["DATABASE_URL"] = url
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from app import create_app

    app = create_app()
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    response = client.post(
        "/login",
        data={
            "username": user,
            "password": password,
            "csrf_token": token.group(1) if token else "",
        },
    )
    assert response.status_code in (302, 303), response.status_code
    client.get("/healthz")
    watch = Watch()
    response = client.get("/export.csv" + (f"?{query}" if query else ""), buffered=False)
    assert response.status_code == 200, response.status_code
    size = lines = sampled = 0
    for chunk in response.response:
        watch.first(size > 0)  # the first chunk is the header alone
        size += len(chunk)
        # The seeded cells hold no line breaks: one per row, and one for the header.
        lines += chunk.count(b"\n")
        if lines - sampled >= SAMPLE_ROWS:
            watch.sample()
            sampled = lines
    response.close()
    return watch.result(lines - 1, size)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "bare":
        result = bare(sys.argv[2])
    elif mode == "copy":
        result = copy(sys.argv[2])
    else:
        result = app_export(*sys.argv[2:])
    print(json.dumps(result))
