"""``hr.from_hf``: a Hugging Face ``datasets.IterableDataset`` as a headrace source.

Users keep ``load_dataset(..., streaming=True)`` (and its own maps and filters) and get headrace's
loader, stages, mixing and checkpoints on top. Rows come as Arrow tables (``with_format("arrow")``),
never as one dict per row. The position is HF's own ``state_dict()``, stored verbatim as a JSON
string (so the shape of headrace's state never changes); what HF's state does not cover — the
contents of an HF ``shuffle`` buffer — HF itself does not restore either: shuffle with headrace
instead. Ranks get ``datasets.distributed.split_dataset_by_node``; HF does not promise equal row
counts per rank unless the shards divide evenly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from headrace.core import state as states
from headrace.core.block import Block
from headrace.core.node import Node, State
from headrace.core.state import fingerprint
from headrace.core.world import World


@dataclass(frozen=True)
class HFSource:
    dataset: Any = field(compare=False)
    block_rows: int

    def describe(self) -> dict[str, Any]:
        info = getattr(self.dataset, "info", None)
        features = getattr(self.dataset, "features", None)
        return {"stage": "from_hf", "block_rows": self.block_rows,
                "dataset": fingerprint([str(getattr(info, "dataset_name", "")), str(features)])}  # fmt: skip


class HFNode(Node[Block]):
    def __init__(self, source: HFSource, world: World, epoch: int) -> None:
        ds = source.dataset
        if world.consumers > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=world.consumer, world_size=world.consumers)
        self.base, self.epoch, self.block_rows = ds, epoch, source.block_rows

    def reset(self, state: State | None) -> None:
        self.ds = self.base.with_format("arrow")  # a fresh copy: HF keeps the position on the object
        self.ds.set_epoch(self.epoch)
        self._rows = 0 if state is None else states.field(state, "rows")
        if state is not None:
            saved = states.field(state, "hf", str)
            try:
                self.ds.load_state_dict(json.loads(saved))
            except Exception as e:  # HF's own checks: KeyError, TypeError, ValueError, IndexError, ...
                raise states.refuse("hf", f"the Hugging Face dataset refuses this state ({type(e).__name__}: {e})"
                                    ) from None  # fmt: skip
        self._it: Any = None

    def state_dict(self) -> State:
        return {"hf": json.dumps(self.ds.state_dict(), sort_keys=True), "rows": self._rows}

    def next(self) -> Block:
        if self._it is None:
            self._it = self.ds.iter(batch_size=self.block_rows)
        table = next(self._it)
        block = Block.from_arrow(table, shard=0, first_row=self._rows)
        self._rows += block.num_rows
        return block

    def close(self) -> None:
        self._it = None
