"""The project's own small model: tokenizer, tiny Llama, SFT warm start, cached build."""
