"""Resolving URLs, globs and directories into shards, and opening them (compressed or not)."""

from headrace.io.resolve import Shard, open_stream, resolve

__all__ = ["Shard", "open_stream", "resolve"]
