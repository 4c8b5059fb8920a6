"""Stage 11: batch images from the loader workers to the trainer through reused shared memory.

torch's DataLoader moves every tensor a worker returns into a new shared-memory segment, and
the trainer then touches fresh pages again. For the image batch (32 x 384 x 384 x 3 = 14 MB of
stored crops with the warp on the device) new pages cost about as much as decoding the crops:
on this project's 2-core VM, 11 ms a batch (350 us a sample) in the worker and again about as
much in the trainer. So each worker gets a few slots of shared memory, allocated once per
loader. It collates its batch images straight into a free slot and sends the slot's number
instead of the pixels. On the trainer's side the batch's `image` is the slot itself (no copy)
and the slot goes back to the worker when the last view of that tensor is freed; with CUDA the
images are copied into pinned memory (the copy DataLoader's pin_memory would make anyway) and
the slot goes back at once. Freed slots travel on a pipe (one os.write: safe from a finalizer,
never blocks). A worker without a free slot, or a batch that does not fit one, falls back to
DataLoader's own transport, so a consumer that keeps every batch only loses the speed-up.

The small fields go the same cheap way: DataLoader gives every tensor its own shared-memory
segment and file-descriptor hand-over (0.65 ms each here: 7 ms a batch for ten small fields),
so tensors under INLINE_BYTES travel as numpy arrays inside the pickled batch and become
tensors again on the trainer's side (`from_wire`, no copy).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import weakref
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .sources import DataError

SLOT_KEY = "image_slot"  # (slot, n, h, w, c) in place of 'image' for a batch sent through a slot
INLINE_BYTES = 1 << 16
DATA_FAILURE = "data_failure"  # a "batch" that says the rank's data failed (pipeline.PoseBatches)


def to_wire(batch: dict[str, Any]) -> None:
    """Worker side: small tensors -> numpy arrays (pickled inline with the batch)."""
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and value.nbytes < INLINE_BYTES:
            batch[name] = value.numpy()


def from_wire(batch: dict[str, Any]) -> None:
    """Trainer side: the numpy arrays of `to_wire` -> tensors."""
    for name, value in batch.items():
        if isinstance(value, np.ndarray):
            batch[name] = torch.from_numpy(value)


def as_is(batch: Any) -> Any:
    """DataLoader's collate_fn: batches come whole, and its default would turn numpy into tensors."""
    return batch


def _release(writer: Any, slot: int) -> None:
    try:
        writer.send_bytes(bytes([slot]))
    except OSError:  # the worker is gone (end of epoch): nobody needs the slot any more
        pass


class ImageSlots:
    """`per_worker` (<= 255) uint8 buffers of `shape` = (batch, height, width, 3) per worker."""

    def __init__(self, workers: int, per_worker: int, shape: tuple[int, int, int, int]) -> None:
        if not 1 <= per_worker <= 255:  # a slot number travels as one byte
            raise ValueError(f"{per_worker} image slots per worker: data.prefetch_factor + 1 must be 1-255")
        self.shape = shape
        self.buffers = [[torch.empty(math.prod(shape), dtype=torch.uint8).share_memory_()
                         for _ in range(per_worker)] for _ in range(workers)]
        self.returns = []  # per worker: (reader for the worker, writer for the trainer)
        for _ in range(workers):
            reader, writer = multiprocessing.Pipe(duplex=False)
            os.set_blocking(writer.fileno(), False)  # a full pipe drops the message, never blocks
            self.returns.append((reader, writer))
        self._free: Optional[set[int]] = None  # the worker's view, built in the worker
        self._claimed: Optional[tuple[int, int]] = None  # (worker, slot) of the batch being made

    def _view(self, worker: int, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        return self.buffers[worker][slot][:math.prod(shape)].numpy().reshape(shape)

    # --- worker side ---
    def allocate(self, worker: int, shape: tuple[int, ...]) -> np.ndarray:
        """An array of `shape` for the next batch's images: a free slot of this worker, or new
        memory when none is free or the batch does not fit."""
        if self._free is None:
            self._free = set(range(len(self.buffers[worker])))
        reader = self.returns[worker][0]
        while reader.poll():
            self._free.update(reader.recv_bytes())
        self._claimed = None
        if not self._free or len(shape) != 4 or any(have > room for have, room in zip(shape, self.shape)):
            return np.empty(shape, np.uint8)
        slot = min(self._free)
        self._free.discard(slot)
        self._claimed = (worker, slot)
        return self._view(worker, slot, tuple(shape))

    def seal(self, batch: dict[str, Any]) -> None:
        """Replace the batch's images by the number of the slot they were collated into (a slot
        claimed for images that ended up elsewhere, too large for it, is free again)."""
        if self._claimed is None:
            return
        worker, slot = self._claimed
        self._claimed = None
        image = batch["image"]
        if image.data_ptr() != self.buffers[worker][slot].data_ptr():
            self._free.add(slot)
            return
        del batch["image"]
        batch[SLOT_KEY] = (slot, *image.shape)

    # --- trainer side ---
    def take(self, worker: int, batch: dict[str, Any], pin_memory: bool) -> None:
        """Put the slot's images back into the batch as a tensor (see the module docstring)."""
        slot, *shape = batch.pop(SLOT_KEY)
        writer = self.returns[worker][1]
        source = self._view(worker, slot, tuple(shape))
        if pin_memory:
            image = torch.empty(source.shape, dtype=torch.uint8, pin_memory=True)
            image.copy_(torch.from_numpy(source))
            _release(writer, slot)
        else:
            # torch keeps `source` alive for as long as any view of the tensor lives
            weakref.finalize(source, _release, writer, slot).atexit = False
            image = torch.from_numpy(source)
        batch["image"] = image


class PoseLoader:
    """The DataLoader with the slots' trainer side; iterate it like one. Every iteration starts
    new workers and gets new slots (`make_slots`): batches kept from an earlier pass keep theirs."""

    def __init__(self, loader: DataLoader, make_slots: Optional[Callable[[], ImageSlots]],
                 pin_memory: bool) -> None:
        self.loader, self.make_slots, self.pin_memory = loader, make_slots, pin_memory
        self.slots: Optional[ImageSlots] = None  # those of the newest iteration

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slots = self.make_slots() if self.make_slots is not None else None
        self.slots = self.loader.dataset.slots = slots  # the workers start with the dataset as it is now
        for batch in self.loader:
            if DATA_FAILURE in batch:
                raise DataError(batch[DATA_FAILURE])
            from_wire(batch)
            if SLOT_KEY in batch:
                slots.take(int(batch["data_worker"]), batch, self.pin_memory)
            yield batch
