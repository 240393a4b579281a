"""Talking to LLM endpoints: the OpenAI-compatible client, its request cache, and managed vLLM servers."""
