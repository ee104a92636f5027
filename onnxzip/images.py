"""Calibration data from a folder of images (PNG and JPEG, read with Pillow).

The recipe a deployment engineer already has: resize to (H, W), scale pixels to [0, 1], optionally
reverse RGB to BGR, subtract a mean and divide by a std per channel of the model's input (after the
BGR swap), and lay the batch out NCHW or NHWC. A folder is read recursively; at most
``max_samples`` images are taken, a seeded random subset when there are more.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, UsageError
from .graph.io import InputSpec

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True)
class ImageRecipe:
    """How images become a model input. ``size``: (H, W), None for the model's own static size;
    ``mean``/``std``: one value, or one per channel, on [0, 1] pixels."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    bgr: bool = False
    layout: str = "nchw"
    max_samples: int = 256
    seed: int = 0

    def check(self) -> None:
        if self.layout not in ("nchw", "nhwc"):
            raise UsageError(f"--layout {self.layout!r}: choose nchw or nhwc")
        if self.max_samples < 1:
            raise UsageError(f"--max-samples {self.max_samples}: must be >= 1")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise UsageError(f"--image-size {self.size}: give H,W (positive)")
        if self.size is not None and max(self.size) > MAX_SIDE:
            raise UsageError(f"--image-size {self.size[0]},{self.size[1]}: at most {MAX_SIDE} a side")
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if not all(math.isfinite(v) and abs(v) <= float(np.finfo(np.float32).max) for v in values):
                raise UsageError(f"{flag} {','.join(f'{v:g}' for v in values)}: give finite values")
        if any(not s > 0 for s in self.std):
            raise UsageError(f"--std {','.join(f'{s:g}' for s in self.std)}: every channel's std must be > 0")


#: the largest image side --image-size takes (a 16384 x 16384 RGB float image is 3 GB)
MAX_SIDE = 16384


def is_image_folder(data: object) -> bool:
    """Whether a ``--data`` item (a path, or arrays) names a folder of images."""
    return isinstance(data, (str, os.PathLike)) and Path(data).is_dir()


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every PNG/JPEG file under ``folder`` (recursively), sorted by path."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))  # (._x.png, .cache/)
    if not files:
        raise InputError(f"{folder}: no PNG or JPEG images in this folder")
    return files


def selected_files(folder: str | os.PathLike, recipe: ImageRecipe) -> list[Path]:
    """The images :func:`load_folder` reads: every one, or a seeded random subset of
    ``recipe.max_samples`` (in path order)."""
    files = image_files(folder)
    if len(files) > recipe.max_samples:
        pick = np.random.default_rng(recipe.seed).choice(len(files), recipe.max_samples, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files


def folder_sha256(folder: str | os.PathLike, recipe: ImageRecipe) -> str:
    """SHA-256 of the images a zip reads from ``folder``: their paths (relative) and bytes."""
    h = hashlib.sha256()
    for path in selected_files(folder, recipe):
        h.update(os.fsencode(path.relative_to(folder).as_posix()))
        h.update(path.read_bytes())
    return h.hexdigest()


def _geometry(spec: InputSpec, recipe: ImageRecipe, source: str) -> tuple[int, int, int]:
    """(channels, H, W) that ``spec`` takes, checked against the recipe."""
    if len(spec.shape) != 4 or spec.dtype.kind != "f":
        raise InputError(f"{source}: input {spec.name!r} ({spec.dtype}, rank {len(spec.shape)}) is not a float image "
                         "batch (rank 4): give its calibration data as .npz/.npy")
    c, h, w = (spec.shape[1], spec.shape[2], spec.shape[3]) if recipe.layout == "nchw" else \
        (spec.shape[3], spec.shape[1], spec.shape[2])
    if c not in (1, 3, None):
        raise InputError(f"{source}: input {spec.name!r} has {c} channels on the {recipe.layout} channel axis; images "
                         "give 1 or 3 (is --layout right?)")
    if recipe.size is not None:
        for given, fixed, what in ((recipe.size[0], h, "height"), (recipe.size[1], w, "width")):
            if fixed is not None and given != fixed:
                raise InputError(f"{source}: --image-size {recipe.size[0]},{recipe.size[1]}: input {spec.name!r} takes "
                                 f"{what} {fixed} only")
        h, w = recipe.size
    elif h is None or w is None:
        raise InputError(f"{source}: input {spec.name!r} has a dynamic height or width: give --image-size H,W")
    return c or 3, h, w


def _per_channel(values: tuple[float, ...], c: int, flag: str) -> np.ndarray:
    if len(values) not in (1, c):
        given = ",".join(f"{v:g}" for v in values)
        raise UsageError(f"{flag} {given}: the model takes {c} channel{'s' if c != 1 else ''}: give "
                         + ("one value" if c == 1 else f"one value or {c}"))
    return np.asarray(values, np.float64).reshape(1, 1, 1, -1)


def _pixels(img, c: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W, c) float64 on [0, 1] for ``size`` (W, H). 8-bit modes convert through Pillow;
    16-bit grayscale ("I;16...") scales by 65535 and 32-bit ("I", "F") by its own type's range,
    instead of clipping at 255."""
    from PIL import Image
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if img.mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        gray = Image.fromarray((a / top).astype(np.float32), mode="F")
        if gray.size != size:
            gray = gray.resize(size, Image.BILINEAR)
        return np.repeat(np.clip(np.asarray(gray, np.float64), 0.0, 1.0)[..., None], c, axis=2)
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    return np.asarray(img, np.float64).reshape(size[1], size[0], c) / 255.0


def load_folder(folder: str | os.PathLike, specs: list[InputSpec], recipe: ImageRecipe) -> dict[str, np.ndarray]:
    """The calibration batch for a single-image-input model from ``folder``.

    Returns:
        input name -> (N, C, H, W) or (N, H, W, C) float32, N <= ``recipe.max_samples``.
    """
    from PIL import Image, UnidentifiedImageError
    bomb = getattr(Image, "DecompressionBombError", OSError)

    source = str(folder)
    if len(specs) != 1:
        raise InputError(f"{source}: the model has {len(specs)} inputs; an image folder serves a single image input "
                         "(give a .npz with every input)")
    spec = specs[0]
    recipe.check()
    c, h, w = _geometry(spec, recipe, source)
    mean, std = _per_channel(recipe.mean, c, "--mean"), _per_channel(recipe.std, c, "--std")
    if recipe.bgr and c != 3:
        raise UsageError(f"--bgr: input {spec.name!r} takes {c} channel, not 3")
    files = selected_files(folder, recipe)
    out = np.empty((len(files), h, w, c), np.float32)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                px = _pixels(img, c, (w, h))
        except (OSError, UnidentifiedImageError, ValueError, bomb) as exc:
            raise InputError(f"{path}: cannot read the image ({exc})") from None
        if recipe.bgr:
            px = px[..., ::-1]
        out[i] = (px - mean[0]) / std[0]
    return {spec.name: np.ascontiguousarray(out.transpose(0, 3, 1, 2) if recipe.layout == "nchw" else out)}
