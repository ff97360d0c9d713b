"""Rollout: generation engines (vLLM / HF behind one protocol) and the rollout worker body."""
