"""The output folder of a prepare run, and how a killed run is picked up again.

::

    OUT/
      part-00000-00000.bin, .idx    token shards (Megatron layout), named after their unit
      manifest.json                 written last, when every unit is done
      .headrace-prepare/            hidden: hr.open("OUT") and "OUT/*.bin" never see it
        job.json                    the run's identity (sources, options, tokenizer), checked on restart
        lock                        held (flock) while a run writes here
        part-00000.done.json        a finished unit: its shards with byte sizes and sha256

Every file is written under a temporary name and renamed into place. A unit counts as done only
when its ``.done.json`` exists and every shard it lists has the recorded size and checksum; any other
unit is redone from scratch after deleting whatever it left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from headrace.io.resolve import Shard
from headrace.prepare.job import Job, PrepareError, Unit, json_dumps

STATE_DIR = ".headrace-prepare"
MANIFEST = "manifest.json"
OUR_FILES = re.compile(r"^part-\d{5,}-\d{5,}\.(bin|idx)(\.tmp)?$")


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def done_path(out: str, unit: Unit) -> str:
    return os.path.join(out, STATE_DIR, f"{unit.name}.done.json")


def write_done(out: str, unit: Unit, shards: Sequence[Shard], record: dict[str, Any]) -> None:
    """Record a finished unit (called by the worker once all its shards are in place)."""
    write_atomic(done_path(out, unit), json_dumps({"unit": unit.describe(shards), **record}))


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class OutDir:
    """The output folder: lock, identity check, completion records, clean-up and the manifest."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = os.path.join(path, STATE_DIR)
        self._lock: Any = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: a second run on the same folder is refused, a killed run's lock vanishes."""
        try:
            os.makedirs(self.state, exist_ok=True)
        except OSError as e:
            raise PrepareError(f"{self.path}: cannot create the output folder ({e})") from None
        with open(os.path.join(self.state, "lock"), "a+") as f:
            try:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # not on POSIX: no lock, as with any other tool
                pass
            except BlockingIOError:
                raise PrepareError(f"{self.path}: another headrace prepare is writing this folder; wait for it "
                                   "or choose another output folder") from None  # fmt: skip
            yield

    def start(self, job: Job, *, overwrite: bool) -> None:
        """Check that a run already here is this same run, else refuse; ``overwrite`` starts over."""
        job_file = os.path.join(self.state, "job.json")
        identity = json.loads(json_dumps(job.identity()))
        if overwrite:
            self.wipe()
        elif os.path.exists(job_file):
            with open(job_file, encoding="utf-8") as f:
                try:
                    before = json.load(f)
                except json.JSONDecodeError:
                    before = {}
            if before != identity:
                keys = sorted(k for k in {*identity, *before} if before.get(k) != identity.get(k))
                opts = before.get("options", {})
                detail = [f"{k}: {opts.get(k)!r} -> {v!r}" for k, v in identity["options"].items() if opts.get(k) != v]
                raise PrepareError(
                    f"{self.path} holds a prepare run with other {', '.join(keys)}"
                    + (f" ({'; '.join(detail)})" if detail else "")
                    + "; choose another output folder, or pass --overwrite to start over"
                )
        elif os.path.exists(os.path.join(self.path, MANIFEST)) or self._our_files():
            raise PrepareError(f"{self.path} already holds token shards that no resumable run wrote; choose "
                               "another output folder, or pass --overwrite to replace them")  # fmt: skip
        write_atomic(job_file, json_dumps(identity))

    def _our_files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path) if OUR_FILES.match(n))
        except FileNotFoundError:
            return []

    def wipe(self) -> None:
        """Delete every file a prepare run writes here (and nothing else)."""
        for name in self._our_files():
            os.remove(os.path.join(self.path, name))
        for name in os.listdir(self.state):
            if name != "lock":
                os.remove(os.path.join(self.state, name))
        manifest = os.path.join(self.path, MANIFEST)
        if os.path.exists(manifest):
            os.remove(manifest)

    def done(self, unit: Unit, shards: Sequence[Shard]) -> dict[str, Any] | None:
        """The unit's completion record if the unit is done and its shards are intact, else None."""
        path = done_path(self.path, unit)
        try:
            with open(path, encoding="utf-8") as f:
                record: dict[str, Any] = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if record.get("unit") != unit.describe(shards):
            return None
        for shard in record.get("shards", []):
            for ext in ("bin", "idx"):
                file = os.path.join(self.path, f"{shard['name']}.{ext}")
                if not os.path.exists(file) or os.path.getsize(file) != shard[f"{ext}_bytes"]:
                    return None
                if sha256_file(file) != shard[f"{ext}_sha256"]:
                    return None
        return record

    def clear(self, unit: Unit) -> None:
        """Delete what an unfinished unit left behind: its record, shards and temporary files."""
        for path in (done_path(self.path, unit), done_path(self.path, unit) + ".tmp"):
            if os.path.exists(path):
                os.remove(path)
        prefix = unit.name + "-"
        for name in self._our_files():
            if name.startswith(prefix):
                os.remove(os.path.join(self.path, name))

    def resume(self, units: Sequence[Unit], shards: Sequence[Shard]) -> dict[int, dict[str, Any]]:
        """Records of the units already done (checked, in parallel); every other unit is cleared."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            records = list(pool.map(lambda u: self.done(u, shards), units))
        done = {}
        for unit, record in zip(units, records, strict=True):
            if record is None:
                self.clear(unit)
            else:
                done[unit.index] = record
        names = {u.name for u in units}
        for name in self._our_files():  # shards of units this plan does not have
            if name.split("-")[0] + "-" + name.split("-")[1] not in names:
                os.remove(os.path.join(self.path, name))
        return done

    def write_manifest(self, manifest: dict[str, Any]) -> str:
        path = os.path.join(self.path, MANIFEST)
        write_atomic(path, json_dumps(manifest))
        return path
