"""One export, in a process of its own so its peak memory is its own.

python bench/export_child.py app DATABASE_URL USER PASSWORD   # GET /export.csv, streamed
python bench/export_child.py bare SQLITE_PATH                 # sqlite3 + csv, nothing else
Prints one JSON line: rows, seconds, bytes, resident memory before and the most seen during.
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


def bare(path: str) -> dict:
    conn = sqlite3.connect(path)
    # The same rows and columns as the app's export, in the same order.
    cur = conn.execute(
        "SELECT request_id, phone, COALESCE(status, 'pending'), code, code_message, send_time, "
        "accepted_at, delivered_at, seen_at, expired_at, failed_at, cost_currency, "
        "cost_local_price, cost_original_price, cost_rate_type, anomalies, replies_count, "
        "last_reply_text, last_activity_at FROM message ORDER BY last_activity_at DESC, request_id DESC")
    before = highest = rss_kb()
    sink = Sink()
    writer = csv.writer(sink, lineterminator="\r\n")
    rows = 0
    start = time.perf_counter()
    for row in cur:
        writer.writerow(row)
        rows += 1
        if rows % 10000 == 0:
            highest = max(highest, rss_kb())
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "bytes": sink.bytes, "rss_before_kb": before,
            "rss_peak_kb": max(highest, rss_kb())}


def app_export(url: str, user: str, password: str) -> dict:
    os.environ["DATABASE_URL"] = url
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from app import create_app

    app = create_app()
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    response = client.post("/login", data={"username": user, "password": password,
                                           "csrf_token": token.group(1) if token else ""})
    assert response.status_code in (302, 303), response.status_code
    client.get("/healthz")
    before = highest = rss_kb()
    start = time.perf_counter()
    response = client.get("/export.csv", buffered=False)
    assert response.status_code == 200, response.status_code
    size = 0
    lines = 0
    for n, chunk in enumerate(response.response):
        size += len(chunk)
        lines += chunk.count(b"\n") if isinstance(chunk, bytes) else chunk.count("\n")
        if n % 10000 == 0:
            highest = max(highest, rss_kb())
    response.close()
    seconds = time.perf_counter() - start
    return {"rows": lines - 1, "seconds": seconds, "bytes": size, "rss_before_kb": before,
            "rss_peak_kb": max(highest, rss_kb())}


if __name__ == "__main__":
    mode = sys.argv[1]
    result = bare(sys.argv[2]) if mode == "bare" else app_export(*sys.argv[2:5])
    print(json.dumps(result))
