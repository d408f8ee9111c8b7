"""The domain: stream logs, runs, the agent loop, sessions and tools."""
