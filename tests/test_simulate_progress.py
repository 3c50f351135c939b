"""The simulator says how far it is while it runs: one line updated in place on a terminal,
plain periodic lines otherwise (`make demo`'s output piped to a file, CI)."""

import io
import re

from app.simulate.run import Progress, Summary

LINE = re.compile(
    r"messages (\d+) · receipts (\d+) · replies (\d+) · (\d+)/(\d+) requests, \d+\.\d/s"
)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_one_line_rewritten_in_place_then_a_newline():
    out = Terminal()
    progress = Progress(out, every=10)
    assert progress.tty and progress.every < 1
    summary = Summary(planned=9, sent=4, started=0.0)
    summary.answered_by_kind.update(send=2, dr=1, message=1)
    progress.show(summary)
    summary.sent = 9
    summary.refused = 1
    summary.answered_by_kind.update(dr=3)
    progress.finish(summary)
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 2 and text.endswith("\n") and text.count("\n") == 1
    last = text.rsplit("\r\x1b[2K", 1)[1]
    assert LINE.search(last).groups() == ("2", "4", "1", "9", "9") and "1 failed" in last


def test_a_pipe_gets_plain_lines():
    out = io.StringIO()
    progress = Progress(out, every=3)
    assert not progress.tty and progress.every == 3
    summary = Summary(planned=5, sent=1, started=0.0)
    summary.answered_by_kind.update(register=1)
    progress.show(summary)
    progress.finish(summary)  # the summary follows; nothing more from the progress
    assert out.getvalue().startswith("progress: ") and "\r" not in out.getvalue()
    assert out.getvalue().count("\n") == 1


def test_simulate_prints_progress_lines_while_it_runs(app, live_server, api_token):
    result = app.test_cli_runner().invoke(
        args=[
            "simulate",
            "--url",
            live_server.url,
            "--messages",
            "12",
            "--rate",
            "8",
            "--speed",
            "100",
            "--seed",
            "4",
            "--progress-every",
            "0.2",
            "--api-token",
            api_token,
        ]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    progress = [n for n, line in enumerate(lines) if line.startswith("progress: ")]
    summary = next(n for n, line in enumerate(lines) if line.startswith("sent "))
    assert len(progress) >= 3 and progress[-1] < summary, result.output
    counts = [tuple(map(int, LINE.search(lines[n]).groups()[:4])) for n in progress]
    pairs = zip(counts, counts[1:], strict=False)
    growing = all(x <= y for a, b in pairs for x, y in zip(a, b, strict=True))
    assert growing and counts[-1][0] > 0, counts
    assert "pushing" not in result.output
