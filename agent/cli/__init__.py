"""The ``bwc-agent`` command line: argument parsing only, each subcommand a thin layer."""
