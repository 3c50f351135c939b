"""Screenshots of the dashboard's main pages for the README and docs/dashboard.md.

Builds the app on a throw-away SQLite file, feeds it the documented NXCLOUD examples
(tests/fixtures/) through the real webhooks with varied requestIds, checks the alert rules
once (an eighth of the messages failed: the default failed-rate rule fires), signs in, and
saves PNGs beside this file: the pages in a 1366x900 window, the messages on a 390x844 phone.
Run: `.venv/bin/python docs/screenshots/make_screenshots.py`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path

from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from app.alerts import notices as alerts  # noqa: E402
from app.auth import accounts as auth  # noqa: E402
from app.records.models import db  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
OUT = Path(__file__).resolve().parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USER, PASSWORD = "operator", "screenshots only"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def populate(client, token: str) -> str:
    """Forty messages over the statuses, a few conversations, one rejected body."""

    def post(path, body):
        response = client.post(
            path,
            data=json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code in (200, 201), response.get_data(as_text=True)

    outcomes = ["seen", "delivered", "seen", "failed", "expired", "success", "seen", "delivered"]
    thread_rid = None
    for i in range(40):
        rid = f"{i:02x}a7d49946094857ae02812969a83{i:03d}"
        phone = f"7910000{i % 12:04d}"
        post(
            "/api/messages",
            {
                "requestId": rid,
                "phone": phone,
                "text": f"Your code is {1000 + i}",
                "appkey": "TexxxP6",
                "functionType": "text",
            },
        )
        final = outcomes[i % len(outcomes)]
        steps = {
            "seen": ["success", "delivered", "seen"],
            "delivered": ["success", "delivered"],
            "failed": ["failed"],
            "expired": ["success", "expired"],
            "success": ["success"],
        }[final]
        for step in steps:
            post("/webhooks/viber/dr", {**fixture(f"dr_{step}"), "requestId": rid})
        if i % 5 == 0:
            post(
                "/webhooks/viber/message",
                {
                    **fixture("reply_text"),
                    "phone": phone,
                    "traceRequestId": rid,
                    "message": {"text": "Thanks!\nSee you tomorrow."},
                },
            )
            thread_rid = thread_rid or rid
        if i == 10:
            post(
                "/webhooks/viber/message",
                {
                    **fixture("reply_media"),
                    "phone": phone,
                    "traceRequestId": rid,
                    "message": {
                        "media": "https://example.com/receipt.jpeg",
                        "fileName": "receipt.jpeg",
                    },
                },
            )
            post("/webhooks/viber/dr", {**fixture("dr_failed"), "requestId": rid})  # an anomaly
    post_bad = client.post(
        "/webhooks/viber/dr",
        data=b'{"status": "read", "requestId": "x"}',
        content_type="application/json",
    )
    assert post_bad.status_code == 422
    return "79100000000"


def main() -> None:
    from playwright.sync_api import sync_playwright

    workdir = tempfile.mkdtemp()
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir}/shots.db", "SECRET_KEY": "shots"}
    )
    with app.app_context():
        db.create_all()
        auth.create_user(USER, PASSWORD)
        token = auth.create_token("screenshots")[1]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        phone = populate(app.test_client(), token)
        with app.app_context():
            alerts.evaluate()
        rid = "0aa7d49946094857ae02812969a83010"
        shots = {
            (1366, 900): (
                ("messages", "/"),
                ("messages-filtered", "/?status=seen&status=failed"),
                ("message", f"/messages/{rid}"),
                ("conversations", "/conversations"),
                ("thread", f"/conversations/{phone}"),
                ("rejected", "/rejected"),
                ("alerts", "/alerts"),
            ),
            # On the phone, the list rather than the filters above it.
            (390, 844): (("messages-phone", "/#results"),),
        }
        for (width, height), pages in shots.items():
            context = browser.new_context(
                base_url=base,
                viewport={"width": width, "height": height},
                timezone_id="Europe/Berlin",
            )
            page = context.new_page()
            page.goto("/login")
            page.fill("#username", USER)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/login" not in url)
            for name, url in pages:
                page.goto(url)
                page.wait_for_load_state("networkidle")
                if "#" in url:
                    page.locator(url[url.index("#") :]).scroll_into_view_if_needed()
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=False)
                print("saved", OUT / f"{name}.png")
            context.close()
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
