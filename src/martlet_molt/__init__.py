"""martlet_molt: an AI chat gateway whose replies never depend on the client's connection."""

__version__ = "0.1.0"
