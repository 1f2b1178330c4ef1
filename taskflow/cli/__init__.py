"""The ``taskflow`` command line: ``worker``, ``queues``, ``dlq`` and ``send``.

Each command lives in its own module and is gathered into one typer app in
:mod:`taskflow.cli.app`. ``taskflow worker`` runs a supervising parent
(:mod:`taskflow.cli.supervisor`) over child processes
(:mod:`taskflow.cli.child`), each running one :class:`taskflow.Worker`.
"""

from __future__ import annotations


def main() -> None:
    """Run the ``taskflow`` command line (the console script and ``python -m taskflow``)."""
    from taskflow.cli.app import app

    app(prog_name="taskflow")
