"""Runs :func:`taskflow.cli.supervisor.main` without importing the ``taskflow`` package.

``taskflow worker`` replaces its own process with ``python <this file>
SUPERVISOR_CONFIG_JSON``. Importing ``taskflow`` itself would load the
whole library (brokers' contract, middleware, msgspec structs) into a process
that only starts and watches children; instead, a bare package object
pointing at the same directory stands in for it, so that only the
supervisor's own modules (the standard library, anyio and msgspec) are
loaded. Nothing in :mod:`taskflow.cli.supervisor` and its imports may use
``from taskflow import ...``.
"""

import sys
import types
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0]).resolve() == here:
        del sys.path[0]  # run as a script: its directory is not a package root
    package = types.ModuleType("taskflow")
    package.__path__ = [str(here.parent)]
    sys.modules["taskflow"] = package

    from taskflow.cli.supervisor import main

    sys.exit(main(sys.argv[1:]))
