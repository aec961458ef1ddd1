"""The node protocol, blocks, state versioning, counter-based rng, the world and the error policy."""
