"""Image files named by path: the ``{"bytes", "path"}`` structs of Hugging Face's ``Image`` feature.

``datasets`` writes an ``Image`` column as ``struct<bytes: binary, path: string>``. Pushed to the Hub
(or embedded with ``embed_table_storage``) a row carries the bytes and the file's base name; written
with ``to_parquet`` from local files it carries only the path, as the user gave it (absolute, or
relative to the working directory of the writer, which ``datasets`` reopens from its own working
directory). headrace decodes the bytes where there are some, and otherwise reads the file, resolving
a relative path against the shard's folder (or ``image_root``).

A path is data, and data may be hostile: a file is read only if its path, made absolute and
normalised (``..`` removed), lies inside the dataset's folder — the folder holding all the source's
shards — or inside ``image_root`` when one is given. Anything else (``/etc/passwd``,
``../../secret``, a URL) is refused with an error naming the record. Symbolic links inside the
folder are followed: whoever can place them there owns the dataset.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headrace.core.redact import redact

SCHEME = "://"


@dataclass(frozen=True)
class ImageFiles:
    """Reads the files of path-only image structs, inside ``root`` only.

    ``shards``: for each shard id of the rows' lineage, the shard's URL and filesystem (None where
    rows come from no file, such as an HF dataset). ``image_root``: the folder relative paths start
    from and must stay in; None: each shard's folder, staying in the shards' common folder.

    >>> import tempfile, pathlib, fsspec
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.png").write_bytes(b"png")
    >>> files = ImageFiles(((str(folder / "x.parquet"), fsspec.filesystem("file")),), None)
    >>> files.read(0, "a.png")
    b'png'
    >>> files.read(0, "../a.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the file '../a.png' is outside the dataset's folder ...
    """

    shards: tuple[tuple[str, Any] | None, ...]
    image_root: str | None

    @property
    def root(self) -> str | None:
        """The folder image files must lie in: ``image_root``, or the shards' common folder."""
        if self.image_root is not None:
            return _normal(self.image_root)
        folders = [_folder(shard[0]) for shard in self.shards if shard is not None]
        return _common(folders) if folders else None

    def resolve(self, shard: int, path: str) -> tuple[str, Any]:
        """The normalised location of ``path`` (named by a row of shard ``shard``) and its filesystem."""
        place = self.shards[shard] if 0 <= shard < len(self.shards) else None
        if place is None:
            raise ValueError(f"the image has no bytes, only the path {path!r}, and its row comes from no file "
                             "folder to read it from (an HF dataset or a batched map); embed the bytes")  # fmt: skip
        url, fs = place
        root = self.root
        assert root is not None
        if SCHEME in path:
            raise ValueError(f"the image has no bytes, only the URL {redact(path)!r}; headrace reads image files "
                             f"only inside the dataset's folder {redact(root)} (embed the bytes, e.g. with datasets' "
                             "embed_table_storage or push_to_hub)")  # fmt: skip
        base = self.image_root if self.image_root is not None else _folder(url)
        where = _normal(_join(base, path))
        if not _inside(where, root):
            raise ValueError(f"the file {path!r} is outside the dataset's folder {redact(root)}; headrace reads "
                             "image files named by path only inside it (pass decode_images(image_root=...) to read "
                             "them from another folder, or embed the bytes)")  # fmt: skip
        return where, fs

    def read(self, shard: int, path: str) -> bytes:
        """The bytes of the file ``path`` names (see :meth:`resolve`); ``OSError`` if it cannot be read."""
        where, fs = self.resolve(shard, path)
        with fs.open(where, "rb") as f:
            return bytes(f.read())


def _split(url: str) -> tuple[str, str]:
    """``("s3://", "bucket/key")``, or ``("", path)`` for a local path."""
    if SCHEME in url:
        scheme, rest = url.split(SCHEME, 1)
        return scheme + SCHEME, rest
    return "", url


def _folder(url: str) -> str:
    prefix, rest = _split(url)
    return prefix + (os.path.dirname(os.path.abspath(rest)) if not prefix else posixpath.dirname(rest))


def _join(base: str, path: str) -> str:
    prefix, rest = _split(base)
    return os.path.join(rest, path) if not prefix else prefix + posixpath.join(rest, path)


def _normal(url: str) -> str:
    prefix, rest = _split(url)
    return os.path.normpath(os.path.abspath(rest)) if not prefix else prefix + posixpath.normpath(rest)


def _inside(url: str, root: str) -> bool:
    (prefix, rest), (root_prefix, root_rest) = _split(url), _split(root)
    if prefix != root_prefix:
        return False
    sep = os.sep if not prefix else "/"
    return rest == root_rest or rest.startswith(root_rest.rstrip(sep) + sep)


def _common(folders: Sequence[str]) -> str:
    """The deepest folder holding all ``folders`` (of one scheme; else the first one's)."""
    parts = [_split(f) for f in folders]
    if len({p for p, _ in parts}) != 1:
        return _normal(folders[0])
    prefix = parts[0][0]
    rests = [r for _, r in parts]
    common = os.path.commonpath(rests) if not prefix else posixpath.commonpath(rests)
    return _normal(prefix + common)
