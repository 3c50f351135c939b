"""The `viberwatch` command: Flask's CLI with this app preset; each area adds its commands."""

import click
from flask.cli import FlaskGroup

from . import create_app


@click.group(cls=FlaskGroup, create_app=create_app)
def main():
    """viberwatch: NXCLOUD Viber webhooks, watched."""


if __name__ == "__main__":  # `python -m app.cli`: how the gunicorn master starts the committer
    main()
