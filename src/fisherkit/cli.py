"""The ``fisherkit`` command.

Each subcommand lives in ``fisherkit/commands/<name>.py`` and exposes ``register(app)``.
User mistakes (``FisherkitError``, bad options) end with a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer


def _usage_errors() -> tuple[type, ...]:
    """The exception types of bad options / arguments: typer < 0.20 raises click's, newer typer its
    vendored copy (``typer._click``) — while a separately installed click may sit beside it, so every
    one that exists is caught, not the first importable."""
    found = []
    for module, name in (("typer._click.exceptions", "ClickException"), ("click.exceptions", "ClickException"),
                         ("typer.exceptions", "TyperException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_CliUsageError = _usage_errors()

from ._version import __version__
from .errors import FisherkitError

# Subcommand modules, in the order `fisherkit --help` lists them.
COMMANDS: list[str] = ["stats", "fisher", "demo", "ewc", "ngd", "active", "bench"]
COMMANDS += ["merge", "prune"]  # fisherkit.commands.merge / .prune (model merging, OBS pruning)
COMMANDS += ["laplace"]  # fisherkit.commands.laplace (Laplace posteriors, calibration study)

app = typer.Typer(
    name="fisherkit",
    help="Fisher information made practical: statistics, Fisher of PyTorch models, natural "
    "gradient, EWC and active learning.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fisherkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Fisher information made practical."""


for _name in COMMANDS:
    importlib.import_module(f"fisherkit.commands.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user mistakes into one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = command.main(args=args or ["--help"], prog_name="fisherkit", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    except _CliUsageError as e:  # bad option, missing argument, unknown command
        typer.echo(f"error: {e.format_message()}", err=True)
        return 2
    except FisherkitError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
