"""The ``curate`` command's entry point: for ``curate run`` Prefect's temporary server is launched
before the CLI's own imports, then the CLI (flows/cli.py) runs.

The server (flows/prefect_server.py) boots in its own process for ~5-7 CPU s, mostly imports;
`curate run` needs it only when its flow starts. Launched here, on the command's first line, its
boot overlaps everything `curate run` does before the flow: the CLI's imports (Typer, Rich, NumPy,
PyArrow: ~1 s), validation, the pipeline modules and Prefect's client. ``python -m flows.cli run``
does the same from the top of flows/cli.py. Where Prefect would not start a temporary server
(``PREFECT_API_URL`` set, a profile naming an API, ``CURATE_EARLY_PREFECT_SERVER=0``: see
``prefect_would_start_one``), nothing is launched. Cost: this module imports only the standard
library and flows/prefect_server.py (~10 ms).

When `curate run` ends with an exit code (success or a handled error), the process leaves with
``os._exit`` after every exit handler has run (Prefect's log and event workers drained, the
server stopped, ``logging`` flushed) and stdout/stderr are flushed: it skips the interpreter's
finalisation (tearing down every module of Prefect, Polars, PyArrow, DuckDB, pandas, freeing
each object), which took 0.5-1.4 s of wall clock after the run's work was done. An uncaught
exception exits as usual, with its traceback. ``CURATE_FAST_EXIT=0`` turns this off.
"""
from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable

_FALSE = {"0", "false", "no", "off"}


def is_run_command(argv: list[str]) -> bool:
    """True for ``curate run ...`` (the subcommand first, as Typer parses it), not for its --help."""
    return bool(argv) and argv[0] == "run" and not any(a in ("--help", "-h") for a in argv[1:])


# The exit code of a `curate run` that ended by sys.exit (empty: still running, or an exception).
_CODE: list[int] = []


def _leave() -> None:
    """The last exit handler of `curate run` (registered before any other, and atexit runs them
    in reverse): flush stdout/stderr and end the process without the interpreter's finalisation."""
    if _CODE:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(_CODE[0])


def start_early(argv: list[str]) -> None:
    """For `curate run` (``argv``: the arguments after the program): arm the fast exit and launch
    Prefect's temporary server; `curate run` then attaches to it (``early_server`` returns the
    same server). Call it before anything else registers an exit handler."""
    if not is_run_command(argv):
        return
    if os.environ.get("CURATE_FAST_EXIT", "1").lower() not in _FALSE:
        atexit.register(_leave)
    from flows.commands.run_startup import start_server
    start_server()


def run_cli(cli_main: Callable[[], None]) -> None:
    """Call ``cli_main`` (the Typer app's ``main``), keeping the exit code it leaves with for
    ``_leave`` (a no-op unless ``start_early`` armed it)."""
    try:
        cli_main()
    except SystemExit as e:  # Typer ends with sys.exit(code); typer.Exit(n) arrives here as SystemExit(n)
        if e.code is None or isinstance(e.code, int):
            _CODE.append(e.code or 0)
        raise
    _CODE.append(0)


def main() -> None:
    start_early(sys.argv[1:])
    from flows.cli import main as cli_main
    run_cli(cli_main)
