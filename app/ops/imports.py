"""`viberwatch import-sends`: a sending system's log of sends, registered as
`POST /api/messages` registers them (the same validation, the same record), so messages sent
before viberwatch was pointed at, or by a system that cannot call it, get their phone, text
and tags too. CSV (a header row naming the columns) or NDJSON (one JSON object a line); the
columns: requestId, phone, text, appkey, functionType, rateType, tags, sentAt."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .. import ingest

COLUMNS = ("requestId", "phone", "text", "appkey", "functionType", "rateType", "tags", "sentAt")
# Registrations applied to one transaction.
CHUNK = 500


@dataclass
class Line:
    number: int  # in the file, from 1 (the CSV header is line 1)
    text: str  # as it stands in the file
    body: bytes  # the registration it makes
    sent_at: datetime | None = None
    error: str | None = None  # when it cannot even be read as a registration


@dataclass
class Imported:
    counts: Counter = field(default_factory=Counter)  # by outcome
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # line, reason, text


def _sent_at(value) -> datetime | None:
    if value in (None, ""):
        return None
    at = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _registration(fields: dict) -> tuple[bytes, datetime | None]:
    """The registration body of a line's fields (the columns it has), and when it was sent."""
    body = {k: fields[k] for k in COLUMNS[:-1] if fields.get(k) not in (None, "")}
    if isinstance(body.get("tags"), str):
        body["tags"] = [t for t in body["tags"].split(",") if t.strip()]
    return json.dumps(body, ensure_ascii=False).encode(), _sent_at(fields.get("sentAt"))


def lines(path: Path) -> Iterator[Line]:
    """Each line of a CSV or NDJSON file as a registration (NDJSON when it starts with `{`)."""
    with open(path, encoding="utf-8", newline="") as f:
        first = f.read(1)
        f.seek(0)
        if first == "{":
            for number, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    fields = json.loads(text)
                    if not isinstance(fields, dict):
                        raise ValueError("not a JSON object")
                    body, sent_at = _registration(fields)
                except ValueError as exc:
                    yield Line(number, text.rstrip("\n"), b"", error=f"line: {exc}")
                    continue
                yield Line(number, text.rstrip("\n"), body, sent_at)
            return
        reader = csv.DictReader(f)
        for row in reader:
            number = reader.line_num
            text = _csv_text(row, reader.fieldnames or [])
            try:
                body, sent_at = _registration(row)
            except ValueError as exc:
                yield Line(number, text, b"", error=f"sentAt: {exc}")
                continue
            yield Line(number, text, body, sent_at)


def _csv_text(row: dict, names: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow([row.get(n, "") for n in names])
    return out.getvalue().rstrip("\r\n")


def import_sends(path: Path, progress: Callable[[int], None] = lambda n: None) -> Imported:
    """Register every line of the file; the rejected ones kept with their reasons."""
    done = Imported()
    chunk: list[Line] = []
    for line in lines(path):
        if line.error:
            done.counts["rejected"] += 1
            done.rejected.append((line.number, line.error, line.text))
            progress(1)
            continue
        chunk.append(line)
        if len(chunk) >= CHUNK:
            _apply(chunk, done)
            progress(len(chunk))
            chunk = []
    if chunk:
        _apply(chunk, done)
        progress(len(chunk))
    done.rejected.sort()
    return done


def _apply(chunk: list[Line], done: Imported) -> None:
    jobs = [
        ingest.new_job(
            "register",
            line.body,
            "application/json",
            {"User-Agent": "viberwatch-import"},
            None,
            received_at=line.sent_at,
        )
        for line in chunk
    ]
    for job in jobs:
        if job.received_at is None:
            ingest.stamp_arrival(job)
    if not ingest.apply_batch(jobs):
        raise RuntimeError("the database is away: nothing more was imported")
    for line, job in zip(chunk, jobs, strict=True):
        result = job.result
        done.counts[result.outcome] += 1
        if not result.ok:
            done.rejected.append((line.number, (result.error or {}).get("error", ""), line.text))
