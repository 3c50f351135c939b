"""The tests that stop a child with SIGINT, as Ctrl-C does, pass however the suite is started:
a shell's background job, nohup and some CI runners start it with SIGINT ignored, and an
ignored signal stays ignored across exec unless support.interrupt sets it back in the child."""

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED = "tests/test_simulate.py::test_an_interrupted_run_reports_its_real_duration_and_rate"


def ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_test_that_interrupts_its_child_passes_when_the_suite_ignores_sigint(request):
    # What such a start hands down: a child of the ignoring parent ignores SIGINT too.
    inherited = subprocess.run(
        [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"],
        preexec_fn=ignoring_sigint,
        capture_output=True,
        text=True,
        check=True,
    )
    assert inherited.stdout.strip() == str(signal.SIG_IGN)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            INTERRUPTED,
            "-q",
            "-p",
            "no:cacheprovider",
            "--db",
            request.config.getoption("--db"),
        ],
        cwd=ROOT,
        preexec_fn=ignoring_sigint,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr
