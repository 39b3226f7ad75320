"""`python -m prunecli` (also what `torchrun -m prunecli` runs in every process)."""

from prunecli.cli.app import main

main()
