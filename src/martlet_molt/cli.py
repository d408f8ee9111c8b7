"""The `martlet-molt` command: serve the gateway; chat with it from a terminal (`terminal.py`)."""

from __future__ import annotations

from typing import Annotated

import typer
from loguru import logger

from martlet_molt.config import Settings
from martlet_molt.gateway.auth import check_bind
from martlet_molt.logs import configure_logging
from martlet_molt.terminal import register as register_client_commands

cli = typer.Typer(help="martlet_molt: a chat gateway whose replies survive the connection.")


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
) -> None:
    """Run the gateway. Without MARTLET_API_KEYS it serves loopback only, unless
    MARTLET_ALLOW_UNAUTHENTICATED is set."""
    settings = Settings()
    configure_logging(settings.log_level)
    bind = check_bind(host, settings)
    if not bind.allowed:
        typer.echo(f"martlet-molt: {bind.message}", err=True)
        raise typer.Exit(2)
    if bind.message:
        logger.warning(bind.message)
    if settings.api_key_list:
        logger.info("bearer auth on ({} API keys configured)", len(settings.api_key_list))
    if settings.provider_kind == "local":
        # A bad model path is a one-line answer at start, not a traceback from the lifespan.
        from martlet_molt.providers.configured import local_model_config
        from martlet_molt.providers.local import LocalModelError

        try:
            local_model_config(settings)
        except LocalModelError as exc:
            typer.echo(f"martlet-molt: {exc.message}", err=True)
            raise typer.Exit(1) from None
    # Imported only now: a refusal above answers at once, without loading the app's stack.
    from martlet_molt.app import create_app
    from martlet_molt.server import GatewayServer

    GatewayServer(create_app(settings), host=host, port=port, freeze_heap=True).run()


@cli.command()
def version() -> None:
    """Print the version."""
    from martlet_molt import __version__

    typer.echo(__version__)


register_client_commands(cli)


def main() -> None:
    """Entry point of the console script."""
    cli()
