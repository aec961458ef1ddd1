"""How the ``headrace`` subcommands write numbers, sizes and paths for people (``rich`` output)."""

from __future__ import annotations

from collections.abc import Sequence


def common_root(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (``""`` if none), so the table can show short names.

    >>> common_root(["data/a/1.parquet", "data/a/2.parquet", "data/b.parquet"]), common_root(["/x.txt"])
    ('data', '')
    """
    folders = [p.split("/")[:-1] for p in paths]
    if not folders:
        return ""
    common = folders[0]
    for parts in folders[1:]:
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    root = "/".join(common)
    return root if root and not root.endswith(("/", ":")) else ""  # "s3:/" or "/": show full paths


def plural(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1.

    >>> plural(1, "shard"), plural(1200, "row")
    ('1 shard', '1,200 rows')
    """
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def human_size(n: int) -> str:
    """A byte count for people: exact below 1 KiB, else one decimal in KiB ... TiB.

    >>> human_size(512), human_size(3 * 2**20)
    ('512 bytes', '3.0 MiB')
    """
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
