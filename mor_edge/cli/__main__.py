"""`python -m mor_edge.cli`."""

from .app import main

main()
