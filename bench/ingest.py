"""The ingest benchmark: the production command under wrk, webhooks against /bench/noop on the
same server in alternating rounds, then a check that every 2xx is stored and that the record
equals a rebuild and a recount. Used by bench/run.py.

Also measured per round: the server's CPU time per request (every gunicorn process, from
/proc), split by process kind (the workers, the ingest committer, and the database server: every
PostgreSQL process on the machine), the workers' context switches per request, the bodies per
ingest transaction (the `viberwatch_ingest_batch_bodies` histogram of
/metrics), and, with py-spy installed, a sampled profile of one worker during one round.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.ingest.committer.supervisor import is_committer  # noqa: E402

METRICS_TOKEN = "bench-metrics"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_pids(master: int) -> list[int]:
    pids = [master]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def kinds_of(master: int, pids: list[int]) -> dict[str, list[int]]:
    """The server's processes (`pids`, from `server_pids`) by kind, and the database server's
    (PostgreSQL's processes)."""
    out: dict[str, list[int]] = {"workers": [], "committer": [], "database": []}
    for pid in pids:
        if pid != master:
            out["committer" if is_committer(pid) else "workers"].append(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if name.startswith("postgres"):
                out["database"].append(int(entry))
    return out


def switches(pids: list[int]) -> int:
    """Context switches (voluntary and not) of every thread of these processes."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{pid}/task/{task}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def usage(groups: dict[str, list[int]]) -> tuple[dict[str, float], int]:
    """CPU seconds per kind, and the workers' context switches."""
    return {kind: cpu_seconds(pids) for kind, pids in groups.items()}, switches(groups["workers"])


def batch_histogram(base: str) -> dict[str, float]:
    """Cumulative buckets, sum and count of the bodies-per-transaction histogram."""
    body = httpx.get(
        base + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
    ).text
    out = {}
    for line in body.splitlines():
        m = re.match(
            r'viberwatch_ingest_batch_bodies_(bucket\{le="([^"]+)"\}|sum|count) (\S+)', line
        )
        if m:
            out[m.group(2) or m.group(1)] = out.get(m.group(2) or m.group(1), 0) + float(m.group(3))
    return out


def batch_summary(before: dict, after: dict) -> dict:
    count = after.get("count", 0) - before.get("count", 0)
    total = after.get("sum", 0) - before.get("sum", 0)
    buckets = sorted(
        (float(k), after[k] - before.get(k, 0))
        for k in after
        if k not in ("sum", "count") and k != "+Inf"
    )
    median = next((le for le, n in buckets if n >= count / 2), None) if count else None
    p90 = next((le for le, n in buckets if n >= count * 0.9), None) if count else None
    return {
        "transactions": count,
        "bodies": total,
        "mean": total / count if count else 0,
        "median_le": median,
        "p90_le": p90,
    }


def wrk(url: str, seconds: int, tag: str, connections: int, noop: bool) -> dict:
    import json

    args = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(ROOT / "bench" / "ingest.lua"),
        url,
        "--",
        tag,
    ] + (["noop"] if noop else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return result


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen | None:
    """py-spy sampling one worker (all its threads) for `seconds`, if py-spy is installed."""
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# Where a sample's time goes, by the innermost frame of ours or of a library that matters.
PLACES = (
    ("commit", re.compile(r"\b(commit|_commit_impl|do_commit)\b")),
    (
        "database: execute",
        re.compile(r"\b(do_execute|do_executemany|execute) \((sqlite3|psycopg|cursor)"),
    ),
    ("ingest: lock and read", re.compile(r"\b(read_messages) \(")),
    ("ingest: decide and derive", re.compile(r"\b(_decide|parse|message_columns|fold) \(")),
    (
        "ingest: writes",
        re.compile(r"\b(_write_raw|_write_records|_write_messages|_write_activity|write) \("),
    ),
    ("ingest: waiting", re.compile(r"\b(wait|_take) \(")),
)


def summarise_profile(path: Path) -> dict:
    """Samples per thread kind (request threads, the ingest writer or committer, others) and, for it,
    per place (first match from the innermost frame outwards)."""
    threads: collections.Counter = collections.Counter()
    writer: collections.Counter = collections.Counter()
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        joined = ";".join(frames)
        idle = (
            re.search(r"\b(wait|select|poll|accept|epoll|_take|sleep) \(", frames[-1]) is not None
        )
        kind = (
            "ingest writer"
            if "_run (app/ingest/" in joined
            or "Committer.run (app/ingest/committer/" in joined
            or "ingest-writer" in frames[0]
            else "request threads"
            if "handle_request" in joined or "wsgi_app" in joined
            else "other"
        )
        threads[(kind, "idle" if idle else "busy")] += int(n)
        if kind == "ingest writer" and not idle:
            for frame in reversed(frames):
                place = next((name for name, rx in PLACES if rx.search(frame)), None)
                if place:
                    writer[place] += int(n)
                    break
            else:
                writer["other"] += int(n)
    return {
        "threads": {f"{k} ({s})": n for (k, s), n in sorted(threads.items())},
        "writer": dict(writer),
    }


def run(
    kind: str,
    url: str,
    seconds: int,
    connections: int,
    *,
    label: str,
    server,
    viberwatch,
    check: bool = True,
) -> dict:
    """Alternating rounds against one production server on `url`; `server` and `viberwatch` are
    bench/run.py's helpers."""
    metrics_dir = tempfile.mkdtemp(prefix="vw-metrics-")
    since = datetime.now(UTC).replace(tzinfo=None)
    rounds = []
    profiled = {}
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ["VIBERWATCH_METRICS_TOKEN"] = METRICS_TOKEN
    try:
        with server(url, noop=True, with_pid=True) as (base, master):
            answered = 0
            for tag, noop in (("wn", True), ("wd", False)):
                r = wrk(base, 3, tag + str(connections), connections, noop)
                answered += 0 if noop else r["requests"] - r["status"]
            for i in range(2):
                pair = {}
                for noop in (True, False):
                    pids = server_pids(master)
                    groups = kinds_of(master, pids)
                    cpu0, use0, hist0 = cpu_seconds(pids), usage(groups), batch_histogram(base)
                    spy = None
                    if not noop and i == 1:
                        # The committer, where bodies are applied, else a worker.
                        children = sorted((p for p in pids if p != master), key=is_committer)
                        out = Path(metrics_dir) / "profile.txt"
                        spy = profile(children[-1], seconds - 1, out) if children else None
                    r = wrk(
                        base, seconds, f"{'n' if noop else 'd'}{i}{connections}", connections, noop
                    )
                    requests = max(1, r["requests"])
                    r["cpu_ms_per_request"] = (
                        (cpu_seconds(server_pids(master)) - cpu0) * 1000 / requests
                    )
                    (kinds0, switches0), (kinds1, switches1) = use0, usage(groups)
                    r["per_request"] = {
                        k: (kinds1[k] - kinds0[k]) * 1000 / requests for k in kinds1
                    } | {"worker_switches": (switches1 - switches0) / requests}
                    if not noop:
                        r["batches"] = batch_summary(hist0, batch_histogram(base))
                        answered += r["requests"] - r["status"]
                    if spy is not None:
                        spy.wait(60)
                        profiled = summarise_profile(out)
                    pair["noop" if noop else "ingest"] = r
                rounds.append(pair)
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        os.environ.pop("VIBERWATCH_METRICS_TOKEN", None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    result = summary(kind, label, connections, rounds, answered)
    result["profile"] = profiled
    if check:
        result.update(consistency(url, viberwatch, since))
    return result


def summary(kind: str, label: str, connections: int, rounds: list[dict], answered: int) -> dict:
    noop = [r["noop"] for r in rounds]
    ingest = [r["ingest"] for r in rounds]
    noop_rate = statistics.mean(r["rate"] for r in noop)
    ingest_rate = statistics.mean(r["rate"] for r in ingest)
    batches = [r["batches"] for r in ingest]
    return {
        "db": kind,
        "database": label,
        "connections": connections,
        "noop_rate": noop_rate,
        "ingest_rate": ingest_rate,
        "ratio": ingest_rate / noop_rate,
        "noop_p50_ms": statistics.mean(r["p50_us"] for r in noop) / 1000,
        "noop_p99_ms": max(r["p99_us"] for r in noop) / 1000,
        "ingest_p50_ms": statistics.mean(r["p50_us"] for r in ingest) / 1000,
        "ingest_p99_ms": max(r["p99_us"] for r in ingest) / 1000,
        "ingest_max_ms": max(r["max_us"] for r in ingest) / 1000,
        "over_2s": sum(r["over_2s"] for r in ingest),
        "errors": sum(r["errors"] for r in noop + ingest),
        "noop_cpu_ms": statistics.mean(r["cpu_ms_per_request"] for r in noop),
        "ingest_cpu_ms": statistics.mean(r["cpu_ms_per_request"] for r in ingest),
        "per_request": {
            side: {
                k: statistics.mean(r["per_request"][k] for r in rs) for k in rs[0]["per_request"]
            }
            for side, rs in (("noop", noop), ("ingest", ingest))
        },
        "batch_mean": sum(b["bodies"] for b in batches)
        / max(1, sum(b["transactions"] for b in batches)),
        "batch_median_le": max((b["median_le"] or 0) for b in batches),
        "batch_p90_le": max((b["p90_le"] or 0) for b in batches),
        "answered_2xx": answered,
    }


def consistency(url: str, viberwatch, since: datetime) -> dict:
    """Every 2xx stored; every message equal to a rebuild; tally and rollups equal to a recount."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT COUNT(*) FROM raw_body WHERE endpoint IN ('dr', 'message') AND http_status = 200 "
                "AND received_at >= :since"
            ),
            {"since": since},
        ).scalar()
        not_ok = conn.execute(
            text(
                "SELECT COUNT(*) FROM raw_body WHERE endpoint IN ('dr', 'message') AND http_status <> 200 "
                "AND received_at >= :since"
            ),
            {"since": since},
        ).scalar()
    engine.dispose()
    rebuild = viberwatch(url, "rebuild", "--check", quiet=True, check=False)
    recount = viberwatch(url, "recount", "--check", quiet=True, check=False)
    return {
        "stored_2xx": stored,
        "stored_not_2xx": not_ok,
        "rebuild": rebuild.stdout.strip().splitlines()[-1]
        if rebuild.stdout.strip()
        else rebuild.stderr[-200:],
        "recount": recount.stdout.strip().splitlines()[-1]
        if recount.stdout.strip()
        else recount.stderr[-200:],
    }


def markdown(results: list[dict]) -> list[str]:
    out = [
        "| database | connections | no-op req/s | webhooks/s | ratio | webhook p50 / p99 / max ms | "
        "slower than 2 s | errors | CPU ms per request (no-op / webhook) | bodies per transaction "
        "(mean, median ≤, p90 ≤) | 2xx answered / stored | rebuild | recount |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        out.append(
            f"| {r['db']}, {r['database']} | {r['connections']} | {r['noop_rate']:,.0f} | {r['ingest_rate']:,.0f} | "
            f"{r['ratio']:.2f} | {r['ingest_p50_ms']:.1f} / {r['ingest_p99_ms']:.1f} / {r['ingest_max_ms']:.0f} | "
            f"{r['over_2s']} | {r['errors']} | {r['noop_cpu_ms']:.2f} / {r['ingest_cpu_ms']:.2f} | "
            f"{r['batch_mean']:.1f}, {r['batch_median_le']:.0f}, {r['batch_p90_le']:.0f} | "
            f"{r['answered_2xx']:,} / {r.get('stored_2xx', 0):,} | {r.get('rebuild', '–')} | {r.get('recount', '–')} |"
        )
    return out


def cpu_markdown(results: list[dict]) -> list[str]:
    """Where a request's CPU goes, by process kind: no-op / webhook."""
    out = [
        "| database | connections | workers ms | committer ms | database server ms | "
        "workers' context switches |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        n, w = r["per_request"]["noop"], r["per_request"]["ingest"]
        # SQLite works inside the committer's process: no server of its own.
        server = "–" if r["db"] == "sqlite" else f"{n['database']:.2f} / {w['database']:.2f}"
        out.append(
            f"| {r['db']}, {r['database']} | {r['connections']} | "
            f"{n['workers']:.2f} / {w['workers']:.2f} | {w['committer']:.2f} | {server} | "
            f"{n['worker_switches']:.1f} / {w['worker_switches']:.1f} |"
        )
    return out
