"""Training on data that is read as it is used (`--streaming`): `datasets` streaming from local parquet,
arrow, webdataset or image files, or the Hub. Every recipe uses the same pieces:

    splits = open_splits(dataset, config, train_dir, streaming=True)   # IterableDatasetDict
    validation = bounded(splits["validation"], max_eval_samples)       # the first N rows, a small map-style Dataset
    train = StreamLoader(fabric, splits["train"], decode, batch_size, batches_per_epoch, seed, ...)
    session.track_stream(train)                                        # its position goes into every checkpoint

- Each process reads its own part (`datasets.distributed.split_dataset_by_node`: whole shards when their
  number divides by the process count, else every world_size-th example), so the data never needs to fit on
  one machine or in memory.
- Shuffling: the order of the shards changes with every pass over the data (seeded), and examples are
  shuffled within blocks of `shuffle_block` examples (seeded by pass and block). Memory holds one block of
  undecoded examples, the batches being decoded and the unit the files are read in (a parquet row group),
  however large the data: shards are read one at a time.
- A run is `--max-steps` long; an "epoch" is `--steps-per-epoch` optimiser steps (evaluation, the checkpoint
  and the epoch line come at its end), and the stream starts its next pass when it runs out.
- The position (pass, the `datasets` state at the start of the block, the block, the examples taken from
  it) is saved with every checkpoint, per process; `--resume` continues at the same example.
- Decoding runs in `--num-workers` DataLoader workers; the stream itself is read by the main process, a few
  batches ahead, so that the position of every batch handed to the loop is known exactly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

logger = logging.getLogger(__name__)


def to_stream(split, num_shards: int = 8):
    """An IterableDataset of `split`: streamed splits as they are, map-style ones (the built-in sets, a saved
    DatasetDict) cut into `num_shards` shards so that processes and passes can take them in any order."""
    import datasets

    if isinstance(split, datasets.IterableDataset):
        return split
    return split.to_iterable_dataset(num_shards=max(1, min(num_shards, len(split))))


def stream_splits(splits, num_shards: int = 8) -> dict:
    """{split name: IterableDataset} of a DatasetDict or IterableDatasetDict (see `to_stream`)."""
    return {name: to_stream(split, num_shards) for name, split in splits.items()}


def undecoded(split, columns):
    """`split` with the named Image columns left as {bytes, path}: decoding happens in the loader's workers."""
    import datasets

    for column in columns:
        if isinstance((split.features or {}).get(column), datasets.Image):
            split = split.cast_column(column, datasets.Image(decode=False))
    return split


def bounded(split, limit: int):
    """The first `limit` rows of a streamed split as a map-style `datasets.Dataset` (images undecoded), for
    evaluation: every evaluation sees the same examples, and memory holds at most `limit` of them."""
    import datasets

    if not isinstance(split, datasets.IterableDataset):
        return split.select(range(min(limit, len(split))))
    split = undecoded(split, [n for n, f in (split.features or {}).items() if isinstance(f, datasets.Image)])
    rows = list(itertools.islice(iter(split), limit))
    return datasets.Dataset.from_list(rows, features=split.features)


@contextlib.contextmanager
def _quiet_shuffle_warning():
    """`datasets` warns on every resume that a shuffle buffer's content is lost; the shuffle here is of the
    shard order only (buffer of one example), which a resume restores exactly."""
    source = logging.getLogger("datasets.iterable_dataset")

    def refuse(record: logging.LogRecord) -> bool:
        return "shuffle buffer" not in record.getMessage()

    source.addFilter(refuse)
    try:
        yield
    finally:
        source.removeFilter(refuse)


def _shuffle_shards(split, seed: int):
    """`split` with its shards in a seeded order (reseeded by set_epoch), one shard read at a time: a
    shuffle buffer of one example. (By default `datasets` fills a buffer from up to 10 shards at once, which
    holds a share of each open file: +470 MB of peak memory for 8 parquet shards of 31 MB.)"""
    try:
        return split.shuffle(seed=seed, buffer_size=1, max_buffer_input_shards=1)
    except TypeError:  # datasets before 4.1 reads one shard at a time anyway
        return split.shuffle(seed=seed, buffer_size=1)


def start_position() -> dict:
    """The position before the first example: pass 0, block 0, nothing taken."""
    return {"pass": 0, "state": None, "block": 0, "offset": 0}


class StreamReader:
    """One process's part of a streamed split, shuffled in blocks, read from a saved position.

    `examples(position)` yields (example, position after it) for ever, pass after pass; a position is plain
    values (it goes into checkpoints read with weights_only=True).
    """

    def __init__(self, split, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle_block: int = 1000,
                 shuffle: bool = True):
        from datasets.distributed import split_dataset_by_node

        if shuffle:  # the shard order, reseeded every pass by set_epoch
            split = _shuffle_shards(split, seed)
        self.dataset = split_dataset_by_node(split, rank, world_size) if world_size > 1 else split
        self.rank, self.seed, self.block, self.shuffle = rank, seed, max(1, shuffle_block), shuffle

    def _order(self, size: int, epoch: int, block: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(size)
        return np.random.default_rng([self.seed, epoch, block, self.rank]).permutation(size)

    def examples(self, position: dict) -> Iterator[tuple[dict, dict]]:
        epoch, state, block, offset = position["pass"], position["state"], position["block"], position["offset"]
        while True:
            self.dataset.set_epoch(epoch)
            self.dataset.load_state_dict(state)  # None: from the start of the pass
            stream = iter(self.dataset)
            found = False
            while True:
                at_block = self.dataset.state_dict()
                with _quiet_shuffle_warning():  # (the state is applied when reading starts)
                    rows = list(itertools.islice(stream, self.block))
                if not rows:
                    break
                found = True
                order = self._order(len(rows), epoch, block)
                for k in range(offset, len(rows)):
                    yield rows[order[k]], {"pass": epoch, "state": at_block, "block": block, "offset": k + 1}
                block, offset = block + 1, 0
            if not found and state is None:
                raise ValueError("the streamed split holds no examples for this process")
            epoch, state, block, offset = epoch + 1, None, 0, 0


class _RawBatches(torch.utils.data.Sampler):
    """The DataLoader's "sampler": undecoded batches read from the stream in the main process, with the
    stream position after each, `count` batches per iteration (so nothing is read past an epoch's end)."""

    def __init__(self, loader: StreamLoader):
        self.loader = loader

    def __iter__(self):
        loader = self.loader
        examples = loader.reader.examples(loader.position)
        for _ in range(loader.remaining):
            batch = list(itertools.islice(examples, loader.batch_size))
            yield [row for row, _ in batch], batch[-1][1]

    def __len__(self) -> int:
        return self.loader.remaining


class _Decode(torch.utils.data.Dataset):
    """Runs in the DataLoader's workers: `decode(rows)` -> a batch dict, plus the stream position."""

    def __init__(self, decode: Callable[[list[dict]], dict | None]):
        self.decode = decode

    def __getitem__(self, item):
        rows, position = item
        return self.decode(rows), position


def _pass_through(item):
    return item


class StreamLoader:
    """Batches of a streamed split for one process: `batches_per_epoch` per iteration, continuing where the
    last iteration stopped; `position` is that of the last batch handed out (what a checkpoint saves).

    `decode(rows)` turns a list of undecoded rows into a batch dict (or None when none was readable); it runs
    in `num_workers` worker processes (0: in this one). Batches are moved to `fabric.device`.
    """

    def __init__(self, fabric, split, decode: Callable[[list[dict]], dict | None], batch_size: int,
                 batches_per_epoch: int, seed: int = 0, shuffle_block: int = 1000, num_workers: int = 0):
        self.fabric, self.batch_size, self.epoch_batches = fabric, batch_size, batches_per_epoch
        self.reader = StreamReader(split, fabric.global_rank, fabric.world_size, seed, shuffle_block)
        self.position = start_position()
        self.remaining = batches_per_epoch
        loader = torch.utils.data.DataLoader(
            _Decode(decode), batch_size=None, sampler=_RawBatches(self), num_workers=num_workers,
            collate_fn=_pass_through, persistent_workers=False,
            # own generator: starting an iteration must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(seed),
        )
        self.loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration yields the rest of an epoch of which `start_batch` batches were taken
        (the same call as ResumableSampler's; the stream position itself is `position`)."""
        self.remaining = max(0, self.epoch_batches - start_batch)

    def batches_per_epoch(self) -> int:
        return self.epoch_batches

    def __iter__(self):
        for batch, position in self.loader:
            self.position = position
            yield batch
        self.remaining = self.epoch_batches

    def __len__(self) -> int:
        return self.epoch_batches

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, position: dict) -> None:
        self.position = dict(position)


__all__ = [
    "StreamLoader",
    "StreamReader",
    "bounded",
    "start_position",
    "stream_splits",
    "to_stream",
    "undecoded",
]
