"""`python -m ftbench` runs the command line."""

from ftbench.cli import main

main()
