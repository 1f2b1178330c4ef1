"""``python -m taskflow``: the command line."""

from taskflow.cli import main

if __name__ == "__main__":
    main()
