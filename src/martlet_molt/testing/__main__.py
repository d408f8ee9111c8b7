"""`python -m martlet_molt.testing --help`: the fake OpenAI upstream as a process."""

from martlet_molt.testing.cli import main

main()
