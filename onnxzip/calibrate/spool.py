"""The calibration set's tensors at a cut of the network, batch by batch, in memory or on disk.

Zipping walks the network stage by stage (:mod:`onnxzip.calibrate.stages`); between two stages, every
sample's live tensors must be kept somewhere. A :class:`Batches` holds them as a list of batches;
a :class:`Spool` keeps batches in memory while their total stays under its memory budget and
writes the rest to ``.npy`` files in a temporary folder (read back one batch at a time), so the
process holds the models, the statistics' accumulators and one batch, not every sample's
activations. A tensor carried through a stage unchanged is shared, not copied.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

#: batches are held in memory while a spool's in-memory total stays below this (bytes)
SPOOL_MEMORY = 512 << 20


class _OnDisk:
    """One spooled array: its file, shape and size; removed when the last holder lets go."""

    def __init__(self, path: Path, nbytes: int, shape: tuple[int, ...]) -> None:
        self.path, self.nbytes, self.holders, self.shape = path, nbytes, 0, shape

    def load(self) -> np.ndarray:
        return np.load(self.path)


class Spool:
    """Where :class:`Batches` keep their arrays (see the module docstring). Use as a context
    manager: the folder is removed on exit."""

    def __init__(self, memory: int | None = None, folder: str | None = None) -> None:
        self.memory = SPOOL_MEMORY if memory is None else memory
        self.in_memory, self.on_disk, self.peak_disk = 0, 0, 0
        self._root = folder
        self._dir: Path | None = None
        self._count = 0

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def keep(self, x: np.ndarray) -> np.ndarray | _OnDisk:
        """``x`` in memory if the budget allows, else written to disk; not yet held (:meth:`hold`).
        Non-tensor values (sequences of maps) stay in memory."""
        if not isinstance(x, np.ndarray) or x.dtype.kind == "O" or self.in_memory + x.nbytes <= self.memory:
            return x
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="onnxzip-", dir=self._root))
        self._count += 1
        path = self._dir / f"{self._count}.npy"
        np.save(path, np.ascontiguousarray(x))
        self.on_disk += x.nbytes
        self.peak_disk = max(self.peak_disk, self.on_disk)
        return _OnDisk(path, x.nbytes, x.shape)

    def hold(self, item: np.ndarray | _OnDisk) -> None:
        if isinstance(item, _OnDisk):
            item.holders += 1
        elif isinstance(item, np.ndarray):
            self.in_memory += item.nbytes

    def release(self, item: np.ndarray | _OnDisk) -> None:
        if isinstance(item, _OnDisk):
            item.holders -= 1
            if item.holders <= 0:
                self.on_disk -= item.nbytes
                if item.path.exists():
                    os.remove(item.path)
        elif isinstance(item, np.ndarray):
            self.in_memory -= item.nbytes


class Batches:
    """One task's named tensors over the calibration set, as consecutive batches (axis 0 = samples)."""

    def __init__(self, spool: Spool | None = None, owned: bool = True) -> None:
        self.spool = spool or Spool(memory=1 << 62)
        self.owned = owned  # False: views of the caller's arrays, not the spool's to release
        self.parts: list[dict[str, np.ndarray | _OnDisk]] = []
        self.sizes: list[int] = []

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray], batch: int, spool: Spool | None = None) -> "Batches":
        """Arrays (N, ...) cut into batches of ``batch`` samples (views, not copies)."""
        out = cls(spool, owned=False)
        n = next(iter(arrays.values())).shape[0] if arrays else 0
        for i in range(0, n, batch):
            out.parts.append({k: v[i:i + batch] for k, v in arrays.items()})
            out.sizes.append(min(batch, n - i))
        return out

    def append(self, size: int, batch: dict[str, np.ndarray],
               carried: dict[str, np.ndarray | _OnDisk] | None = None) -> None:
        """Add one batch of ``size`` samples: new arrays (kept by the spool) and ``carried``
        entries of another :class:`Batches` (shared, not copied)."""
        part = {k: self.spool.keep(v) for k, v in batch.items()}
        part.update(carried or {})
        for v in part.values():
            self.spool.hold(v)
        self.parts.append(part)
        self.sizes.append(size)

    def __contains__(self, name: str) -> bool:
        return bool(self.parts) and name in self.parts[0]

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def names(self) -> list[str]:
        return list(self.parts[0]) if self.parts else []

    @property
    def samples(self) -> int:
        return sum(self.sizes)

    def sample(self, name: str) -> np.ndarray:
        """One sample of tensor ``name`` (1, ...), read without loading a whole spooled batch."""
        v = self.parts[0][name]
        return np.load(v.path, mmap_mode="r")[:1].copy() if isinstance(v, _OnDisk) else v[:1]

    def entries(self, name: str) -> int:
        """How many entries tensor ``name`` has along its first axis over all samples (the samples,
        or tokens x samples for a token-major tensor flattened to rows), from the first batch's ratio."""
        shape = self.parts[0][name].shape  # (an array, or a spooled one's recorded shape)
        per_sample = shape[0] / max(self.sizes[0], 1) if shape else 1.0
        return max(1, int(round(per_sample * self.samples)))

    def raw(self, i: int) -> dict[str, np.ndarray | _OnDisk]:
        """Batch ``i`` as stored (for carrying into another :class:`Batches`)."""
        return self.parts[i]

    def batch(self, i: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Batch ``i`` (the named tensors, default all) as arrays."""
        part = self.parts[i]
        return {k: _load(part[k]) for k in (names if names is not None else part)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self.parts)):
            yield self.batch(i)

    def column(self, name: str) -> Iterator[np.ndarray]:
        """Tensor ``name``, batch by batch."""
        for part in self.parts:
            yield _load(part[name])

    def array(self, name: str) -> np.ndarray | list:
        """Tensor ``name`` over all samples (for small tensors: outputs; a non-tensor output: its list)."""
        parts = list(self.column(name))
        if parts and not isinstance(parts[0], np.ndarray):
            return [x for p in parts for x in p]
        return np.concatenate(parts)

    def same(self, other: "Batches", name: str) -> bool:
        """Whether tensor ``name`` holds the same values here and in ``other``, sample by sample."""
        if name not in self or name not in other or len(self) != len(other):
            return False
        for a, b in zip(self.parts, other.parts):
            if a[name] is b[name]:
                continue
            if not np.array_equal(_load(a[name]), _load(b[name])):
                return False
        return True

    def drop(self) -> None:
        """Let go of every batch (spooled files are removed when nothing else holds them)."""
        if self.owned:
            for part in self.parts:
                for v in part.values():
                    self.spool.release(v)
        self.parts, self.sizes = [], []


def _load(v: np.ndarray | _OnDisk) -> np.ndarray:
    return v.load() if isinstance(v, _OnDisk) else v
