"""The `martlet-molt` command: serve the gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from martlet_molt.app import create_app
from martlet_molt.config import Settings
from martlet_molt.logs import configure_logging
from martlet_molt.server import GatewayServer

cli = typer.Typer(help="martlet_molt: a chat gateway whose replies survive the connection.")


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
) -> None:
    """Run the gateway."""
    settings = Settings()
    configure_logging(settings.log_level)
    GatewayServer(create_app(settings), host=host, port=port).run()


@cli.command()
def version() -> None:
    """Print the version."""
    from martlet_molt import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the console script."""
    cli()
