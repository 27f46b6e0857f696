"""The `ftbench` command line: parse options, call the library, print with rich.

`app` (cli/app.py) is the command tree; each command lives in the module of its topic
(profiles, tune, cache, reports, convert, run, serve, env), options several commands share are
defined once in cli/options.py, and printing goes through cli/output.py. `main` is the console
script: it turns every error into one line and an exit code.
"""

from __future__ import annotations

import os
import sys

import typer

from ftbench.cli.app import app
from ftbench.cli.output import error_console, print_error
from ftbench.errors import FtbenchError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: FtbenchError, and a command line click cannot parse (an
    unknown option, a value of the wrong type or outside its choices, a missing argument),
    become one line on stderr and exit code 2; any other exception is a bug: one line naming
    it and exit code 3 (FTBENCH_DEBUG=1 re-raises it, for the traceback)."""
    try:  # typer 0.2x carries its own copy of click, whose exceptions it raises
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors

    try:
        code = app(standalone_mode=False)  # click's errors come here, not to its own printer
    except FtbenchError as exc:
        print_error(str(exc))
        sys.exit(2)
    except click_errors.NoArgsIsHelpError as exc:  # `ftbench cache`: the group's help
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "ftbench"
        print_error(f"{exc.format_message().rstrip('.')} (see `{where} --help`)")
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        print_error(exc.format_message())
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except Exception as exc:
        if os.environ.get("FTBENCH_DEBUG") == "1":
            raise
        error_console.print(
            f"ftbench: internal error: {type(exc).__name__}: {exc} "
            "(set FTBENCH_DEBUG=1 for the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
        sys.exit(3)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        error_console.print("[yellow]interrupted[/]")
    sys.exit(code if isinstance(code, int) else 0)
