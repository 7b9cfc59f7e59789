"""python -m kstore: the command line (kstore.cli)."""

from kstore.cli import main

main()
