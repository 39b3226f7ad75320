"""Batches for training and evaluation.

In-memory splits (`TensorSplit`) are moved to the device once as uint8; every batch is
then gathered, randomly cropped/flipped and normalised with a handful of batched tensor
ops on that device -- no per-image Python or PIL work, which is what makes the training
loop faster than a DataLoader + torchvision-transforms loop (scripts/bench_train.py).

Randomness is a pure function of (seed, epoch): the shuffle order, the crops and flips of
epoch e are the same whether the run went straight through or was resumed at epoch e.
Under DDP every rank draws the same permutation and takes its own stride of it.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prunecli.data._registry import Augment, DataBundle, TensorSplit


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A distinct, reproducible 63-bit seed for (run seed, epoch, stream)."""
    return (seed * 1_000_003 + epoch * 9_176 + stream * 7_919 + 12_345) % (2**63 - 1)


def _rank_indices(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, pad: bool) -> torch.Tensor:
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    else:
        order = torch.arange(n)
    if world_size > 1:
        if pad:  # equal step counts on every rank: DDP's all-reduce needs them
            total = math.ceil(n / world_size) * world_size
            order = torch.cat([order, order[: total - n]])
        order = order[rank::world_size]
    return order


class TensorBatches:
    """Batches of a `TensorSplit` on ``device``: (float N x C x H x W normalised, int64 labels)."""

    def __init__(
        self,
        split: TensorSplit,
        *,
        batch_size: int,
        device: torch.device,
        mean,
        std,
        augment: Optional[Augment] = None,
        shuffle: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        channels_last: bool = False,
    ):
        self.images = split.images.to(device, non_blocking=True)
        self.labels = split.labels.to(device, non_blocking=True)
        self.batch_size = batch_size
        self.device = device
        c = self.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255)
        self.augment = augment if augment and (augment.crop_padding or augment.hflip) else None
        self.shuffle = shuffle
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.channels_last = channels_last
        self.epoch = 0
        self._train = shuffle  # training splits pad ranks to equal length; evaluation splits never duplicate

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        return _rank_indices(
            self.num_samples,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            pad=self._train,
        )

    def __len__(self) -> int:
        return math.ceil(len(self._order()) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        params = None
        if self.augment is not None:
            # one draw per *sample* of the dataset, not per batch: sample i gets the same crop
            # and flip in a 1-process and an N-process run (DDP then equals 1 process exactly)
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, stream=1))
            params = draw_augment_params(self.num_samples, self.augment, gen)
        n = len(order)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self._train and len(idx) == 1 and n > 1:
                break  # a lone last sample would make BatchNorm fail in training mode
            x = self.images.index_select(0, idx.to(self.device, non_blocking=True))
            if params is not None:
                x = augment_batch(x, self.augment, *(p.index_select(0, idx).to(self.device) for p in params))
            x = (x.float() - self.mean) * self.inv_std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx.to(self.device, non_blocking=True))


def draw_augment_params(n: int, aug: Augment, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets (dy, dx in [0, 2p]) and flip flags for ``n`` samples."""
    p = aug.crop_padding
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5 if aug.hflip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flip


def augment_batch(x: torch.Tensor, aug: Augment, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random crop after zero padding and horizontal flip, batched (uint8 in, uint8 out)."""
    b, c, h, w = x.shape
    if aug.crop_padding:
        p = aug.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))  # zeros, as torchvision's RandomCrop(fill=0)
        rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # b x h
        cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # b x w
        # two gathers (rows, then columns) instead of a per-image loop
        x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
        x = x.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if aug.hflip:
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class _EpochSampler(Sampler[int]):
    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int, pad: bool):
        self.n, self.shuffle, self.seed, self.rank, self.world_size, self.pad = n, shuffle, seed, rank, world_size, pad
        self.epoch = 0

    def __iter__(self):
        order = _rank_indices(
            self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size, pad=self.pad
        )
        return iter(order.tolist())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        return math.ceil(self.n / self.world_size) if self.pad else len(range(self.rank, self.n, self.world_size))


class FolderBatches:
    """Batches of a map-style Dataset through a DataLoader, seeded per epoch."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        workers: int = 4,
        channels_last: bool = False,
    ):
        self.dataset = dataset
        self.device = device
        self.seed = seed
        self.channels_last = channels_last
        self.sampler = _EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, pad=shuffle)
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
            generator=self.generator,  # workers' seeds derive from it: reseeded every epoch
            persistent_workers=False,
        )
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch, stream=2))
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


class _Relabeled(Dataset):
    def __init__(self, dataset: Dataset, labels: list[int]):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x, _ = self.dataset[i]
        return x, self.labels[i]


def shuffle_labels(split, seed: int):
    """Randomly permute the training labels (Zhang et al.'s expressivity test), seeded.

    The label multiset is unchanged; which image carries which label is random.
    """
    gen = torch.Generator().manual_seed(epoch_seed(seed, 0, stream=3))
    if isinstance(split, TensorSplit):
        perm = torch.randperm(len(split), generator=gen)
        return TensorSplit(split.images, split.labels[perm].clone())
    targets = getattr(split, "targets", None)
    if targets is None:
        targets = [int(split[i][1]) for i in range(len(split))]
    perm = torch.randperm(len(targets), generator=gen).tolist()
    return _Relabeled(split, [int(targets[j]) for j in perm])


def make_batches(
    bundle: DataBundle,
    split: str,
    *,
    batch_size: int,
    device: torch.device,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 4,
    channels_last: bool = False,
    labels_shuffled: bool = False,
    label_seed: Optional[int] = None,
):
    """Batches of ``bundle.train`` or ``bundle.test``; ``train`` turns on shuffling and augmentation.

    ``labels_shuffled``: the labels permuted by ``label_seed`` (default ``seed``).
    """
    data = bundle.train if split == "train" else bundle.test
    if labels_shuffled:
        data = shuffle_labels(data, seed if label_seed is None else label_seed)
    if isinstance(data, TensorSplit):
        return TensorBatches(
            data,
            batch_size=batch_size,
            device=device,
            mean=bundle.spec.mean,
            std=bundle.spec.std,
            augment=bundle.augment if train else None,
            shuffle=train,
            rank=rank,
            world_size=world_size,
            seed=seed,
            channels_last=channels_last,
        )
    return FolderBatches(
        data,
        batch_size=batch_size,
        device=device,
        shuffle=train,
        rank=rank,
        world_size=world_size,
        seed=seed,
        workers=workers,
        channels_last=channels_last,
    )
