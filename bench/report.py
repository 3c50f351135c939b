"""Markdown tables of a benchmark run (bench/run.py prints them), writing a measured section
into docs/benchmarks.md, and what the page benchmarks (campaigns, search, pages) share: their
common options, seeding their databases at once, timing on each in turn, then saving,
printing and writing their results."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ingest import cpu_markdown
from ingest import markdown as ingest_markdown
from ingest_phases import markdown as phases_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_between(doc: Path, start: str, end: str, text: str) -> None:
    """Replace what stands between the markers `start` and `end` of `doc` with `text`."""
    if not doc.exists():
        return
    content = doc.read_text()
    if start in content and end in content:
        head, rest = content.split(start, 1)
        _, tail = rest.split(end, 1)
        doc.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options every page benchmark takes (`doc` is its help); each adds its own."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument(
        "--reuse", action="store_true", help="keep a database seeded by an earlier run"
    )
    parser.add_argument("--write-docs", action="store_true")
    return parser


def seeded_at_once(
    kinds: list[str], seeded: Callable[[str], tuple[str, dict]]
) -> dict[str, tuple[str, dict]]:
    """`seeded(kind)` (a database's URL and marker) of every kind, all at the same time (each
    seed is one process)."""
    with ThreadPoolExecutor(len(kinds)) as pool:
        return dict(zip(kinds, pool.map(seeded, kinds), strict=True))


def measured_in_turn(
    done: dict[str, tuple[str, dict]],
    measure: Callable[[str, str, dict], list[dict]],
    log: Callable[..., None],
) -> tuple[dict[str, dict], list[dict]]:
    """`measure(kind, url, marker)` on each seeded database in turn (`done`, as
    seeded_at_once returns it): the markers by kind, as measure leaves them, and all the rows."""
    made, rows = {}, []
    for kind, (url, marker) in done.items():
        made[kind] = marker
        log(f"timing on {kind}")
        rows += measure(kind, url, marker)
    return made, rows


def publish(
    section: str, results: dict, render: Callable[[], str], *, data: Path, write_docs: bool
) -> None:
    """Save `results` as `<section>.json` in the folder `data` (first, so that they are kept
    even if rendering fails), then print the markdown `render()` makes and, with `write_docs`,
    write it between `<!-- section:start -->` and `<!-- section:end -->` of docs/benchmarks.md."""
    data.mkdir(parents=True, exist_ok=True)
    (data / f"{section}.json").write_text(json.dumps(results, indent=2))
    out = render()
    print(out)
    if write_docs:
        write_between(DOCS, f"<!-- {section}:start -->", f"<!-- {section}:end -->", out)


def markdown(results: dict) -> str:
    out = []
    if any(s["seconds"] for s in results.get("seed", [])):
        out += [
            "### Seeding (both databases at once)",
            "",
            "| database | messages | replies | seconds | messages/s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for s in results["seed"]:
            if s["seconds"]:
                out.append(
                    f"| {s['db']} | {s['messages']:,} | {s['replies']:,} | {s['seconds']:.0f} | "
                    f"{s['messages'] / s['seconds']:,.0f} |"
                )
        out.append("")
    if results.get("ingest"):
        out += ["### Ingest", ""] + ingest_markdown(results["ingest"]) + [""]
        out += (
            [
                "CPU per request by process, no-op / webhook (workers, database server; the",
                "committer has no share of a no-op) and the workers' context switches per request:",
                "",
            ]
            + cpu_markdown(results["ingest"])
            + [""]
        )
    if results.get("phases"):
        out += ["### Ingest, CPU per body by phase", ""] + phases_markdown(results["phases"]) + [""]
    for d in results.get("dashboard", []):
        out += [
            f"### Dashboard, {d['db']} (p95 ms, p50 in brackets)",
            "",
            "| view | page | fragment | counters |",
            "| --- | ---: | ---: | ---: |",
        ]

        def cell(t):
            return f"{t['p95']:.1f} ({t['p50']:.1f})" if t else "–"

        for row in d["rows"]:
            name = row["what"].removeprefix("messages: ")
            counters = d["counters"].get(name)
            out.append(
                f"| {row['what']} | {cell(row['page'])} | {cell(row.get('fragment'))} | "
                f"{cell(counters)} |"
            )
        out.append("")
    if results.get("export"):
        out += [
            "### Export",
            "",
            "| database | what | rows | seconds | rows/s | CPU s (this process) | "
            "ratio | first byte ms | first row ms | memory growth MB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        names = {"bare": "sqlite3 + csv loop", "copy": "COPY ... TO STDOUT WITH CSV, psycopg"}
        for e in results["export"]:
            base_rate = e["baseline"]["rows"] / e["baseline"]["seconds"]
            for what, x in (
                ("GET /export.csv", e["app"]),
                (names[e["baseline_kind"]], e["baseline"]),
                ("GET /export.csv?kind=replies", e["replies"]),
            ):
                rate = x["rows"] / x["seconds"]
                ratio = f"{rate / base_rate:.2f}" if x is e["app"] else "–"
                out.append(
                    f"| {e['db']} | {what} | {x['rows']:,} | {x['seconds']:.1f} | {rate:,.0f} | "
                    f"{x['cpu_seconds']:.1f} | {ratio} | {x['first_byte_ms']:.0f} | "
                    f"{x['first_row_ms']:.0f} | {(x['rss_peak_kb'] - x['rss_before_kb']) / 1024:.1f} |"
                )
        out.append("")
        for e in results["export"]:
            pairs = [
                (a["rows"] / a["seconds"]) / (b["rows"] / b["seconds"])
                for a, b in zip(e["rounds"]["app"], e["rounds"]["baseline"], strict=False)
            ]
            out += [
                f"{e['db']}: app rows/s over baseline rows/s in each round (baseline, then app): "
                f"{', '.join(f'{p:.2f}' for p in pairs)}; median {statistics.median(pairs):.2f}",
                "",
            ]
        out += [
            "What each kind of cell costs the database (bench/export_cost.py: CPU seconds of the "
            "export's query, best of 3; SQLite in process, PostgreSQL in its server process, serial plan):",
            "",
            "| database | every cell formatted | times as stored | texts as stored | prices as stored | "
            "all as stored |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for e in results["export"]:
            c = e["cost"]["cpu_seconds"]
            out.append(
                f"| {e['db']} | "
                + " | ".join(
                    f"{c[k]:.1f}"
                    for k in (
                        "every cell formatted",
                        "times as stored",
                        "texts as stored",
                        "prices as stored",
                        "all as stored",
                    )
                )
                + " |"
            )
        out.append("")
    if results.get("rebuild"):
        out += [
            "### Rebuild",
            "",
            "| database | messages | receipts | seconds | receipts/s | result |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["rebuild"]:
            out.append(
                f"| {r['db']} | {r['messages']:,} | {r['receipts']:,} | {r['seconds']:.0f} | "
                f"{r['receipts'] / r['seconds']:,.0f} | {r['report']} |"
            )
        out.append("")
    return "\n".join(out)
