"""Markdown tables of a benchmark run (bench/run.py prints them), and writing a measured
section into docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path

from ingest import markdown as ingest_markdown


def write_between(doc: Path, start: str, end: str, text: str) -> None:
    """Replace what stands between the markers `start` and `end` of `doc` with `text`."""
    if not doc.exists():
        return
    content = doc.read_text()
    if start in content and end in content:
        head, rest = content.split(start, 1)
        _, tail = rest.split(end, 1)
        doc.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def markdown(results: dict) -> str:
    out = []
    if any(s["seconds"] for s in results.get("seed", [])):
        out += ["### Seeding (both databases at once)", "",
                "| database | messages | replies | seconds | messages/s |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for s in results["seed"]:
            if s["seconds"]:
                out.append(f"| {s['db']} | {s['messages']:,} | {s['replies']:,} | {s['seconds']:.0f} | "
                           f"{s['messages'] / s['seconds']:,.0f} |")
        out.append("")
    if results.get("ingest"):
        out += ["### Ingest", ""] + ingest_markdown(results["ingest"]) + [""]
    for d in results.get("dashboard", []):
        out += [f"### Dashboard, {d['db']} (p95 ms, p50 in brackets)", "",
                "| view | page | fragment | counters |", "| --- | ---: | ---: | ---: |"]
        for row in d["rows"]:
            name = row["what"].removeprefix("messages: ")
            counters = d["counters"].get(name)
            cell = lambda t: f"{t['p95']:.1f} ({t['p50']:.1f})" if t else "–"
            out.append(f"| {row['what']} | {cell(row['page'])} | {cell(row.get('fragment'))} | "
                       f"{cell(counters)} |")
        out.append("")
    if results.get("export"):
        out += ["### Export", "", "| database | what | rows | seconds | rows/s | memory growth MB |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
        for e in results["export"]:
            for what in ("app", "bare"):
                if what in e:
                    x = e[what]
                    out.append(f"| {e['db']} | {'GET /export.csv' if what == 'app' else 'sqlite3 + csv'} | "
                               f"{x['rows']:,} | {x['seconds']:.1f} | {x['rows'] / x['seconds']:,.0f} | "
                               f"{(x['rss_peak_kb'] - x['rss_before_kb']) / 1024:.1f} |")
        out.append("")
    if results.get("rebuild"):
        out += ["### Rebuild", "", "| database | messages | receipts | seconds | receipts/s | result |",
                "| --- | ---: | ---: | ---: | ---: | --- |"]
        for r in results["rebuild"]:
            out.append(f"| {r['db']} | {r['messages']:,} | {r['receipts']:,} | {r['seconds']:.0f} | "
                       f"{r['receipts'] / r['seconds']:,.0f} | {r['report']} |")
        out.append("")
    return "\n".join(out)
