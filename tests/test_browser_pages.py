"""Every page in a real Chromium: nothing blocked or failing in the console, and a layout that
fits a 1366 px window and stays usable on a 390 px phone."""
import pytest

from test_analytics import CUSTOM, load_fixture

pytestmark = pytest.mark.browser

# The Content-Security-Policy forbids inline styles and scripts; a violation is an error here
# even where Chromium would only count it.
REPORT_CSP = """document.addEventListener("securitypolicyviolation", e =>
  console.error(`CSP violation: ${e.violatedDirective} by ${e.sourceFile}:${e.lineNumber}`));"""


def watch(page) -> list[str]:
    """Console errors, uncaught exceptions and CSP violations of the pages opened from now on."""
    page.goto("about:blank")  # leave the signed-in landing page first
    page.context.add_init_script(REPORT_CSP)
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return problems


def test_analytics_charts_redrawn_after_a_swap_break_no_policy(page, app):
    """htmx settles a swapped report by copying the old elements' attributes onto the new
    ones; a chart's canvas has a style attribute (Chart.js sizes it), which the policy blocks."""
    with app.app_context():
        load_fixture()
    problems = watch(page)
    page.goto(f"/analytics?{CUSTOM}")
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-cost'))")
    with page.expect_response(lambda r: "/analytics?" in r.url and r.request.headers.get("hx-request")):
        page.evaluate("htmx.trigger('#analytics-report', 'analytics-refresh')")
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-cost'))")
    page.wait_for_timeout(300)
    assert problems == []
