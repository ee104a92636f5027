"""Calibration and held-out inputs for the real model sets of ``tools/fetch_real.py`` (no downloads).

Images come from scikit-image's bundled photos (those that ship inside the wheel) and text rendered
with Pillow's built-in font; each set's preprocessing recipe is the one its models were trained with.
"""
from __future__ import annotations

import numpy as np

#: scikit-image images that ship inside its wheel (others are fetched on first use: not used here)
PHOTOS = ("text", "page", "camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "horse", "clock")
WORDS = ("onnx", "zip", "model", "runtime", "Tensor", "shared", "neuron", "layer", "2026", "HESSIAN", "merge",
         "detector", "text", "Invoice No. 42", "total: 17.30", "seal", "stamp", "OCR", "page 3", "graph")
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def photos() -> list[np.ndarray]:
    """The bundled photos as (H, W, 3) uint8 RGB."""
    import skimage.data
    out = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # an image that would need a download
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-9))).astype(np.uint8)
        out.append(img[..., :3])
    return out


def render_text(size: tuple[int, int], rng: np.random.Generator, background: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: lines of words in random places, sizes, colours (on ``background`` if given)."""
    from PIL import Image, ImageDraw, ImageFont
    h, w = size
    img = Image.fromarray(background) if background is not None else \
        Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(170, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        font = ImageFont.load_default(size=float(rng.integers(12, 40)))
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        xy = (int(rng.integers(0, max(1, w - 40))), int(rng.integers(0, max(1, h - 20))))
        colour = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text(xy, text, fill=colour, font=font)
    return np.asarray(img)


def crops(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``n`` (H, W, 3) uint8 images: half crops of the bundled photos (with text drawn on every
    second one), half rendered text pages."""
    rng = np.random.default_rng(seed)
    pics = photos()
    h, w = size
    out = []
    for i in range(n):
        if i % 2 == 0:
            img = pics[int(rng.integers(len(pics)))]
            if img.shape[0] < h or img.shape[1] < w:
                reps = (-(-h // img.shape[0]), -(-w // img.shape[1]), 1)
                img = np.tile(img, reps)
            y, x = int(rng.integers(0, img.shape[0] - h + 1)), int(rng.integers(0, img.shape[1] - w + 1))
            crop = np.ascontiguousarray(img[y:y + h, x:x + w])
            out.append(render_text(size, rng, crop) if i % 4 == 0 else crop)
        else:
            out.append(render_text(size, rng))
    return np.stack(out)


def seal_stamps(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``n`` (H, W, 3) uint8 seal impressions: a red ring with words set along its arc and a line in
    the middle, at random places and sizes, on paper or on a photo crop."""
    from PIL import Image, ImageDraw, ImageFont
    rng = np.random.default_rng(seed)
    backgrounds = crops(n, size, seed + 7)
    h, w = size
    out = []
    for i in range(n):
        img = Image.fromarray(backgrounds[i]) if i % 3 == 2 else \
            Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(225, 256, 3)))
        draw = ImageDraw.Draw(img)
        r = int(rng.uniform(0.3, 0.48) * min(h, w))
        cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
        fs = int(np.clip(r * rng.uniform(0.17, 0.25), 12, 40))
        colour = (int(rng.integers(170, 240)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(3, r // 18))
        font = ImageFont.load_default(size=float(fs))
        text = " ".join(rng.choice(WORDS, size=3)).upper()
        start, span = rng.uniform(0.95, 1.15) * np.pi, rng.uniform(0.7, 0.95) * np.pi
        for k, ch in enumerate(text):
            a = start + span * k / max(len(text) - 1, 1)
            x, y = cx + (r - fs) * np.cos(a), cy + (r - fs) * np.sin(a)
            glyph = Image.new("RGBA", (2 * fs, 2 * fs), (0, 0, 0, 0))
            ImageDraw.Draw(glyph).text((fs // 2, fs // 4), ch, fill=colour + (255,), font=font)
            glyph = glyph.rotate(-np.degrees(a) - 90)
            img.paste(glyph, (int(x) - fs, int(y) - fs), glyph)
        draw.text((cx - 2 * fs, cy - fs // 2), str(rng.choice(WORDS)), fill=colour, font=font)
        out.append(np.asarray(img))
    return np.stack(out)


def imagenet_bgr(images: np.ndarray) -> np.ndarray:
    """PaddleOCR's detector recipe: BGR, (x/255 - mean) / std, NCHW float32."""
    x = images[..., ::-1].astype(np.float64) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR)) for img in images])


def rotations(images: np.ndarray, ks: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image rotated by k * 90 degrees counter-clockwise for a random k in ``ks``; (images, labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(ks), len(images))
    return np.stack([np.rot90(img, ks[y]) for img, y in zip(images, labels)]), labels.astype(np.int64)


def set_inputs(set_name: str, task: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs (and labels where they exist) for one task of a set; ``seed`` picks the samples."""
    if set_name == "ocr_det":  # seal text: two thirds seal impressions; general text: photos and text
        size = (320, 320)
        if task == "seal":
            k = (2 * n) // 3
            return {"x": imagenet_bgr(np.concatenate([seal_stamps(k, size, seed), crops(n - k, size, seed)]))}
        return {"x": imagenet_bgr(crops(n, size, seed))}
    if set_name == "ocr_cls":
        if task == "document":  # 4-way page orientation: 0, 90, 180, 270 degrees
            imgs, y = rotations(crops(n, (256, 256), seed), (0, 1, 2, 3), seed + 1)
            x = resize(imgs, (224, 224))
        else:  # text line: upright or upside down
            imgs, y = rotations(crops(n, (48, 192), seed), (0, 2), seed + 1)
            x = resize(imgs, (80, 160))
        x = (x.astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32), "label": y}
    if set_name.startswith("sk_mlp"):
        dim = int(set_name[-1])
        rng = np.random.default_rng(seed)
        return {"input": rng.uniform(0.0, 1.0, (n, dim)).astype(np.float32)}
    raise KeyError(set_name)
