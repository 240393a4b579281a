"""Stage-1 layout text: parsing and normalising LLM layout completions without ever evaluating them."""
