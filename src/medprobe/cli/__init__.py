"""Command line: argument parsing and wiring only; each sub-command is a ``cmd_*.py`` module."""
