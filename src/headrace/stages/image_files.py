"""Image files named by path: the ``{"bytes", "path"}`` structs of Hugging Face's ``Image`` feature.

``datasets`` writes an ``Image`` column as ``struct<bytes: binary, path: string>``. Pushed to the Hub
(or embedded with ``embed_table_storage``) a row carries the bytes and the file's base name; written
with ``to_parquet`` from local files it carries only the path, as the user gave it (absolute, or
relative to the working directory of the writer, which ``datasets`` reopens from its own working
directory). headrace decodes the bytes where there are some, and otherwise reads the file, resolving
a relative path against the shard's folder (or ``image_root``).

A path is data, and data may be hostile: a file is read only if its path, made absolute and
normalised (``..`` removed), lies inside the folder of the row's own shard, or inside ``image_root``
when one is given (never a folder above them, however far apart the shards are). Anything else
(``/etc/passwd``, ``../../secret``, a URL) is refused with an error naming the record. A local path
is checked again with its symbolic links resolved: a link inside the folder that leads out of it is
refused too.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

from headrace.core.redact import redact

SCHEME = "://"


@dataclass(frozen=True)
class ImageFiles:
    """Reads the files of path-only image structs, inside ``root`` only.

    ``shards``: for each shard id of the rows' lineage, the shard's URL and filesystem (None where
    rows come from no file, such as an HF dataset). ``image_root``: the folder relative paths start
    from and must stay in; None: each row's shard's folder.

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

    def resolve(self, shard: int, path: str) -> tuple[str, Any]:
        """The normalised location of ``path`` (named by a row of shard ``shard``) and its filesystem."""
        place = self.shards[shard] if 0 <= shard < len(self.shards) else None
        if place is None:
            raise ValueError(f"the image has no bytes, only the path {path!r}, and its row comes from no file "
                             "folder to read it from (an HF dataset or a batched map); embed the bytes")  # fmt: skip
        url, fs = place
        root = _normal(self.image_root if self.image_root is not None else _folder(url))
        if SCHEME in path:
            raise ValueError(f"the image has no bytes, only the URL {redact(path)!r}; headrace reads image files "
                             f"only inside the dataset's folder {redact(root)} (embed the bytes, e.g. with datasets' "
                             "embed_table_storage or push_to_hub)")  # fmt: skip
        where = _normal(_join(root, path))
        local = SCHEME not in where
        if not _inside(where, root) or (local and not _inside(os.path.realpath(where), os.path.realpath(root))):
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
