"""OpenAI's protocol in front of martlet runs: Responses and Chat Completions."""
