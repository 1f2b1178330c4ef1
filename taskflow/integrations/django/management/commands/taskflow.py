"""``python manage.py taskflow worker|queues|dlq|send ...``: the taskflow CLI on the project's broker."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskflow.integrations._commands import run
from taskflow.integrations.django._worker import SPEC


class Command(BaseCommand):
    """The ``taskflow`` CLI's commands and flags, with the broker taken from ``settings.TASKFLOW``."""

    help = (
        "Run taskflow workers (`worker`, with the flags of `taskflow worker`) and inspect "
        "queues (`queues`, `dlq`) on the project's broker. `manage.py taskflow --help` lists them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Everything after ``taskflow`` goes to the CLI (for ``call_command``)."""
        parser.add_argument("cli_args", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand ``manage.py taskflow ARGS`` to the CLI as they are, flags and ``--help`` included."""
        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        sys.exit(run(argv[2:], spec=SPEC, prog_name=prog))

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the CLI with ``options["cli_args"]``; a non-zero status raises ``SystemExit``."""
        status = run(options.get("cli_args") or [], spec=SPEC, prog_name="manage.py taskflow")
        if status:
            raise SystemExit(status)
