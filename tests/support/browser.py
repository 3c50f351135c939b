"""Chromium through Playwright: a signed-in tab, and the console errors of a page."""

from .accounts import TEST_PASSWORD, TEST_USER, create_test_user

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def signed_in_tab(browser, app, base_url, **context_options):
    """A new browser context and tab on `base_url`, signed in through the real login form."""
    context = browser.new_context(base_url=base_url, **context_options)
    tab = context.new_page()
    create_test_user(app)
    tab.goto("/login")
    tab.fill("#username", TEST_USER)
    tab.fill("#password", TEST_PASSWORD)
    tab.click("button[type=submit]")
    tab.wait_for_url(lambda url: "/login" not in url)
    return context, tab


# The Content-Security-Policy forbids inline styles and scripts; a violation is an error here
# even where Chromium would only count it.
REPORT_CSP = """document.addEventListener("securitypolicyviolation", e =>
  console.error(`CSP violation: ${e.violatedDirective} by ${e.sourceFile}:${e.lineNumber}`));"""


def watch_console(page) -> list[str]:
    """Console errors, uncaught exceptions and CSP violations of the pages opened from now on
    (the signed-in landing page is left first)."""
    page.goto("about:blank")
    page.context.add_init_script(REPORT_CSP)
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return problems
