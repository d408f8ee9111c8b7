"""`python -m martlet_molt` is the `martlet-molt` command."""

from martlet_molt.cli import main

main()
