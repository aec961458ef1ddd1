"""Framework adapters, imported lazily: torch, jax, transformers."""
