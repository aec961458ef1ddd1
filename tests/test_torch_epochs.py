"""Epochs under ``DataLoader``/``StatefulDataLoader`` without ``set_epoch`` (issue #15, part 2): each pass over the
IterableDataset view is the next epoch, with persistent workers or fresh ones, and a resumed pass continues its
epoch and is followed by the one after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import headrace as hr  # noqa: E402
from headrace.core.world import World  # noqa: E402
from headrace.integrations.torch import IterableDataset  # noqa: E402

N = 5000  # rows in the parquet_dir fixture
WORKERS = 2


def shuffled(parquet_dir: Path) -> hr.Dataset:
    return hr.open(str(parquet_dir), columns=["id"]).shuffle(seed=11, buffer_size=500).batch(100)


def ids(batches: Any) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def expected_epoch(ds: hr.Dataset, epoch: int) -> list[list[int]]:
    """Epoch ``epoch`` as the DataLoader hands it out: each worker's own part (a headrace Loader on that worker's
    world), one batch from each worker in turn."""
    parts = []
    for w in range(WORKERS):
        loader = hr.Loader(ds, world=World(worker=w, num_workers=WORKERS), uneven="off")
        loader.set_epoch(epoch)
        parts.append(ids(loader))
    return [part[k] for k in range(max(map(len, parts))) for part in parts if k < len(part)]


@pytest.mark.parametrize("persistent", [False, True])
def test_each_pass_over_a_dataloader_is_the_next_epoch(parquet_dir: Path, persistent: bool) -> None:
    ds = shuffled(parquet_dir)
    dl = DataLoader(IterableDataset(ds), batch_size=None, num_workers=WORKERS, persistent_workers=persistent)
    epochs = [ids(dl) for _ in range(3)]
    assert epochs == [expected_epoch(ds, e) for e in range(3)]
    flat = [sorted(i for b in e for i in b) for e in epochs]
    assert flat[0] == flat[1] == flat[2] == list(range(N))  # every row once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # in a new order each time
    fresh = DataLoader(IterableDataset(ds), batch_size=None, num_workers=WORKERS, persistent_workers=persistent)
    ids(fresh)
    assert ids(fresh) == epochs[1]  # a fresh run's second epoch is the same
    view = IterableDataset(ds)
    view.set_epoch(2)  # DistributedSampler's convention still works
    assert ids(DataLoader(view, batch_size=None, num_workers=WORKERS)) == epochs[2]


def test_in_process_every_pass_is_the_next_epoch_even_after_a_break(parquet_dir: Path) -> None:
    ds = shuffled(parquet_dir)
    view = IterableDataset(ds)
    first = ids(view)
    for batch in view:  # epoch 1, left after one batch
        assert batch["id"].tolist() == expected_single(ds, 1)[0]
        break
    assert ids(view) == expected_single(ds, 2)  # a new pass: epoch 2, from its start
    assert first == expected_single(ds, 0)


def expected_single(ds: hr.Dataset, epoch: int) -> list[list[int]]:
    loader = hr.Loader(ds)
    loader.set_epoch(epoch)
    return ids(loader)


@pytest.mark.parametrize("persistent", [False, True])
def test_stateful_dataloader_resumes_inside_epoch_2_then_goes_on_to_epoch_3(
    parquet_dir: Path, persistent: bool
) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    ds = shuffled(parquet_dir)

    def loader() -> Any:
        return StatefulDataLoader(IterableDataset(ds), batch_size=None, num_workers=WORKERS,
                                  persistent_workers=persistent)  # fmt: skip

    first = loader()
    assert ids(first) == expected_epoch(ds, 0)
    it = iter(first)
    taken = [next(it)["id"].tolist() for _ in range(7)]
    epoch2 = expected_epoch(ds, 1)
    assert taken == epoch2[:7]
    state = json.loads(json.dumps(first.state_dict()))
    del it
    again = loader()
    again.load_state_dict(state)
    assert ids(again) == epoch2[7:]  # the rest of epoch 2, exactly
    assert ids(again) == expected_epoch(ds, 2)  # then epoch 3, as the uninterrupted run would


def test_set_epoch_refuses_a_negative_epoch(parquet_dir: Path) -> None:
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        IterableDataset(shuffled(parquet_dir)).set_epoch(-1)
