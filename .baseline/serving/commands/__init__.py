"""`pagedjax` subcommands: one module per command (see serving/cli.py)."""
