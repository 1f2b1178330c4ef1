"""The ``taskflow`` CLI's commands, run on a framework's broker: ``manage.py taskflow``, ``flask taskflow``.

The framework's command passes its arguments through; the broker spec the
CLI's commands take as their first argument (``MODULE:BROKER``) is filled in
with a loader that sets the framework up in any process, so ``worker``
children, ``queues`` and ``dlq`` all find the project's broker and actors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer.main


def with_spec(command: Any, args: Sequence[str], spec: str) -> list[str]:
    """``args`` with ``spec`` inserted where the chosen subcommand's ``app`` argument goes.

    ``command`` is the CLI as a click command (typer's own copy of click or
    click itself, so it is looked at only through what both have).
    """
    args = list(args)
    chosen, at = command, 0
    while at < len(args) and args[at] in (getattr(chosen, "commands", None) or {}):
        chosen = chosen.commands[args[at]]
        at += 1
    if hasattr(chosen, "commands") or not any(
        getattr(p, "name", None) == "app" and getattr(p, "param_type_name", "") == "argument"
        for p in getattr(chosen, "params", [])
    ):
        return args  # a group's help, or a command without a broker argument
    return [*args[:at], spec, *args[at:]]


def run(args: Sequence[str], *, spec: str, prog_name: str) -> int:
    """Run the ``taskflow`` CLI with ``args`` on the broker ``spec`` loads; return its exit status.

    The project's directory (the first entry of ``sys.path``, where
    ``manage.py`` or the Flask app lives) is put on ``PYTHONPATH`` so worker
    children, which start with ``python -m``, import the project as this
    process does.
    """
    from taskflow.cli.app import app

    _export_project_path()
    command = typer.main.get_command(app)
    try:
        command.main(args=with_spec(command, args, spec), prog_name=prog_name)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _export_project_path() -> None:
    project = os.path.abspath(sys.path[0] or os.getcwd())
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if project not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([project, *paths])
