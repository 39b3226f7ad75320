"""Command-line interface: app.py wires the commands; each module parses one command's
options and calls one library function. Nothing here imports torch at module level, so
that `prunecli --help` starts fast."""
