"""The `martlet-molt` command: serve the gateway; migrate its database (`db upgrade`, `db
current`); chat with it from a terminal (`terminal.py`, `session_commands.py`).

`martlet-molt serve` loads only what the gateway runs: the terminal client's commands (rich,
Markdown rendering, an HTTP client) are registered for every other command line, and `cli`
(the whole command set, for tests and embedding) is built on first use.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from loguru import logger

HELP = "martlet_molt: a chat gateway whose replies survive the connection."
SERVER_COMMANDS = ("serve", "version", "db")
"""Commands that need no terminal client."""


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes serving the port (more than 1 needs MARTLET_REDIS_URL).",
        ),
    ] = 1,
) -> None:
    """Run the gateway. Without MARTLET_API_KEYS it serves loopback only, unless
    MARTLET_ALLOW_UNAUTHENTICATED is set."""
    from martlet_molt.config import Settings
    from martlet_molt.core.memory import allocator_description
    from martlet_molt.gateway.auth import check_bind
    from martlet_molt.logs import configure_logging

    settings = Settings()
    refusal = settings.serving_refusal(workers=workers)
    if refusal is not None:
        typer.echo(f"martlet-molt: {refusal}", err=True)
        raise typer.Exit(2)
    configure_logging(settings.log_level)
    logger.debug("memory: {}", allocator_description())
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
    _upgrade_schema_in_a_child_process(settings.database_url)
    if workers > 1:
        from martlet_molt.workers import serve_workers

        try:
            code = serve_workers(settings, host=host, port=port, count=workers)
        except OSError as exc:
            typer.echo(f"martlet-molt: cannot listen on {host}:{port}: {exc}", err=True)
            raise typer.Exit(1) from None
        raise typer.Exit(code)
    # Imported only now: a refusal above answers at once, without loading the app's stack.
    from martlet_molt.app import create_app
    from martlet_molt.server import GatewayServer

    GatewayServer(create_app(settings), host=host, port=port, freeze_heap=True).run()


def _upgrade_schema_in_a_child_process(database_url: str) -> None:
    """Migrate a database that is not at this release's schema with `db upgrade` in a child
    process, before serving: Alembic (with Mako and Pygments) would otherwise stay loaded in
    the serving process for its whole life, ~10 MB of its RSS (docs/BENCHMARKS.md,
    "Measurements behind the code"). Where the database cannot be read here, or is in memory
    (private to the process), the store migrates when it opens, as it always can."""
    import asyncio
    import subprocess

    from sqlalchemy.engine import make_url

    from martlet_molt.store.migrations import HEAD_REVISION, database_revision
    from martlet_molt.store.transactions import is_memory

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and is_memory(url):
        return
    try:
        if asyncio.run(database_revision(database_url)) == HEAD_REVISION:
            return
    except Exception:  # the store reports it when it opens, with its own error
        return
    upgrade = [sys.executable, "-m", "martlet_molt", "db", "upgrade"]
    completed = subprocess.run(upgrade, stdout=subprocess.PIPE, text=True, check=False)
    if completed.returncode != 0:  # the child has said why on stderr
        raise typer.Exit(completed.returncode)
    logger.info("schema migrated: {}", completed.stdout.strip())


def version() -> None:
    """Print the version."""
    from martlet_molt import __version__

    typer.echo(__version__)


def db_upgrade() -> None:
    """Migrate the database (MARTLET_DATABASE_URL) to this release's schema."""
    # The gateway migrates on start too; this is for doing it ahead of a deployment.
    import asyncio

    from martlet_molt.config import Settings
    from martlet_molt.errors import SchemaTooNew
    from martlet_molt.store.migrations import upgrade_database

    try:
        revision = asyncio.run(upgrade_database(Settings().database_url))
    except SchemaTooNew as exc:
        typer.echo(f"martlet-molt: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"at revision {revision}")


def db_current() -> None:
    """Print the revision the database (MARTLET_DATABASE_URL) is at, changing nothing."""
    import asyncio

    from martlet_molt.config import Settings
    from martlet_molt.store.migrations import HEAD_REVISION, database_revision

    revision = asyncio.run(database_revision(Settings().database_url))
    if revision == HEAD_REVISION:
        typer.echo(f"{revision} (head)")
    else:
        typer.echo(f"{revision or 'none'} (head: {HEAD_REVISION})")


def _server_commands() -> typer.Typer:
    app = typer.Typer(help=HELP)
    app.command()(serve)
    app.command()(version)
    db = typer.Typer(help="The database's schema.", no_args_is_help=True)
    db.command("upgrade")(db_upgrade)
    db.command("current")(db_current)
    app.add_typer(db, name="db")
    return app


def build_cli() -> typer.Typer:
    """Every `martlet-molt` command: the server's and the terminal client's."""
    from martlet_molt.session_commands import register as register_session_commands
    from martlet_molt.terminal import register as register_client_commands

    app = _server_commands()
    register_client_commands(app)
    register_session_commands(app)
    return app


_cli: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    """`cli`, the whole command set, built when first asked for."""
    global _cli
    if name != "cli":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _cli is None:
        _cli = build_cli()
    return _cli


def main() -> None:
    """Entry point of the console script."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "serve":
        # Before anything starts: the process may run again on glibc's malloc (core/memory.py).
        from martlet_molt.core.memory import use_system_malloc

        use_system_malloc()
    if command in SERVER_COMMANDS:
        _server_commands()()
    else:
        build_cli()()
