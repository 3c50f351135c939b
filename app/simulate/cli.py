"""`viberwatch simulate`: its options, and the run they describe (played by run.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import with_appcontext

from .run import PATHS, SEND_PATH_HINT, Player, Progress, SendPathError, Summary, Target, play
from .script import CAMPAIGNS, build_script
from .send_api import PlayedSendApi


@click.command("simulate")
@click.option(
    "--url",
    default="http://127.0.0.1:5000",
    show_default=True,
    help="Base URL of the viberwatch to play against.",
)
@click.option("--rate", type=float, default=5.0, show_default=True, help="New messages per second.")
@click.option(
    "--duration", type=float, help="Start messages for this many seconds (rate × duration)."
)
@click.option("--messages", type=int, help="Number of messages (default 100).")
@click.option("--seed", type=int, help="Reproduce a run: same seed, same bodies in the same order.")
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Register each message through POST /api/messages, as a sending system would.",
)
@click.option("--api-token", envvar="VIBERWATCH_API_TOKEN", help="Bearer token for the JSON API.")
@click.option("--token", help="Webhook URL token (default: the WEBHOOK_TOKEN setting).")
@click.option(
    "--access-key", help="Sign webhooks with this accessKey (default: WEBHOOK_SIGN_ACCESS_KEY)."
)
@click.option("--secret", help="Signing secret (default: WEBHOOK_SIGN_SECRET).")
@click.option(
    "--speed",
    type=float,
    default=1.0,
    show_default=True,
    help="Divide the delays between a message's receipts (10 = ten times faster).",
)
@click.option(
    "--concurrency", type=int, default=16, show_default=True, help="Requests in flight at most."
)
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for each answer before counting a network error.",
)
@click.option("--zone", default=None, help="Zone of the sendTime fields (default: SENDTIME_TZ).")
@click.option(
    "--send-api",
    metavar="HOST:PORT",
    help="Also play NXCLOUD's send API here, and keep answering sends until Ctrl-C.",
)
@click.option(
    "--through-proxy",
    is_flag=True,
    help="Send each message through viberwatch's send proxy (POST /nxcloud/api/viber/mt, "
    "with the API token and a campaign tag) to the played send API, instead of registering "
    "it; its receipts follow the requestId the send API answers. Needs --send-api, and the "
    "server's NXCLOUD_BASE_URL pointing at it.",
)
@click.option(
    "--progress-every",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between progress lines when the output is not a terminal (on a terminal "
    "one line is updated in place).",
)
@click.option("--quiet", is_flag=True, help="No progress line.")
@with_appcontext
def simulate_command(
    url,
    rate,
    duration,
    messages,
    seed,
    register,
    api_token,
    token,
    access_key,
    secret,
    speed,
    concurrency,
    timeout,
    zone,
    send_api,
    through_proxy,
    progress_every,
    quiet,
):
    """Play NXCLOUD: push synthetic receipts and replies to a running viberwatch."""
    if duration is not None and messages is not None:
        raise click.UsageError("give --duration or --messages, not both")
    if rate <= 0 or speed <= 0 or concurrency < 1 or timeout <= 0 or progress_every <= 0:
        raise click.UsageError(
            "--rate, --speed, --concurrency, --timeout and --progress-every must be positive"
        )
    if through_proxy and not send_api:
        raise click.UsageError(
            "--through-proxy needs --send-api: the proxy must forward to the played send API"
        )
    count = (
        messages if messages is not None else (max(1, round(rate * duration)) if duration else 100)
    )
    config = current_app.config
    target = Target(
        url=url,
        token=token or config.get("WEBHOOK_TOKEN"),
        access_key=access_key or config.get("WEBHOOK_SIGN_ACCESS_KEY"),
        secret=secret or config.get("WEBHOOK_SIGN_SECRET"),
        api_token=api_token,
        send_access_key=config.get("NXCLOUD_ACCESS_KEY"),
        send_secret=config.get("NXCLOUD_ACCESS_SECRET"),
    )
    zone = zone or config.get("SENDTIME_TZ") or "UTC+08:00"
    seeded = seed is not None
    if not seeded:
        seed = int.from_bytes(os.urandom(4), "big")
    start = None if seeded else datetime.now(UTC)
    script = build_script(
        seed,
        count,
        rate=rate,
        register=register,
        start=start,
        zone=zone,
        speed=speed,
        send=through_proxy,
    )
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(script.outcomes().items()))
    click.echo(
        f"seed {seed}: {count} messages ({outcomes}), {len(script.events)} requests to {url}"
    )

    holder: dict = {}
    api = None
    if send_api:
        host, _, port = send_api.rpartition(":")
        if not port.isdigit():
            raise click.UsageError("--send-api takes HOST:PORT")
        try:
            api = PlayedSendApi(
                host or "127.0.0.1",
                int(port),
                lambda events: holder["player"].loop.call_soon_threadsafe(
                    holder["player"].play_later, events
                ),
                access_key=config.get("NXCLOUD_ACCESS_KEY"),
                secret=config.get("NXCLOUD_ACCESS_SECRET"),
                zone=zone,
                seed=seed,
                speed=speed,
            )
        except OSError as exc:
            raise click.ClickException(
                f"cannot play the send API on {send_api}: {exc.strerror or exc}"
            ) from exc
    progress = None if quiet else Progress(sys.stdout, progress_every)

    def report(summary: Summary) -> None:
        if holder.get("reported"):
            return
        holder["reported"] = True
        if progress is not None:
            progress.finish(summary)
        for line in summary.lines():
            click.echo(line)

    def on_start(player: Player) -> None:
        holder["player"] = player
        if progress is not None:
            holder["progress"] = player.loop.create_task(progress.run(player.summary))
        if api is not None:
            api.start()
            click.echo(f"playing NXCLOUD's send API at {api.url}{SEND_PATH_HINT}")
        if through_proxy:
            click.echo(
                f"sending each message through viberwatch's send proxy at "
                f"{url.rstrip('/')}{PATHS['send']}, tagged {' or '.join(CAMPAIGNS)} (or not)"
            )

    async def then(player: Player) -> None:
        report(player.summary)
        if api is not None:
            click.echo(
                "script done; still answering sends (and pushing their receipts) until Ctrl-C"
            )
            await asyncio.Event().wait()

    try:
        summary = asyncio.run(
            play(
                script,
                target,
                concurrency=concurrency,
                timeout=timeout,
                on_start=on_start,
                then=then,
                send_api=api,
            )
        )
    except SendPathError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        if "player" not in holder:
            raise
        summary = holder["player"].summary
        click.echo("interrupted", err=True)
    finally:
        if api is not None:
            api.stop()
    report(summary)
    if summary.refused or summary.errors:
        sys.exit(1)
