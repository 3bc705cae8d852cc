"""Training data: HR images in RAM, their LR made once, aligned random crops, fixed val crops.

* Every HR image is mod-cropped to the scale and its LR is MATLAB-style antialiased bicubic
  of the WHOLE image (``imresize_np``, uint8 in and out), exactly like a stored LR file.
  Cutting the LR out of an HR crop instead would give every patch wrong borders.
* The LR images are cached on disk as ``.npy``, keyed by the file's content hash, the scale
  and :data:`LR_METHOD`, so a second run (or a resumed one) does not recompute them.
* :class:`PatchSampler` draws aligned LR/HR crops with flips and 90-degree rotations from a
  ``torch.Generator`` the caller seeds; :func:`step_generator` seeds one per (seed, phase,
  step), so a resumed run draws exactly the batches an uninterrupted one would.
* :class:`ValSet`: fixed LR/HR crops (centre, or centre + corners) of the val images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sr_tile.errors import ConfigError, ImageWriteError, SrTileError
from sr_tile.imresize import bicubic_grid, imresize, imresize_np
from sr_tile.io.atomic import write_bytes_atomic

__all__ = [
    "IMAGE_SUFFIXES", "LR_METHOD", "ImagePair", "LoadStats", "PatchSampler", "ScaleBatch",
    "ScaleSampler", "ValSet",
    "list_images", "load_pairs", "make_val_set", "step_generator", "to_rgb8",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
# Changes whenever the HR decoding or the LR recipe changes, so stale cache files are ignored.
LR_METHOD = "rgb8-modcrop-matlab-bicubic-aa-v1"

OnImage = Callable[[int, int, str, bool], None]  # (index, total, name, from_cache)


@dataclass
class ImagePair:
    """One HR image (H x W x 3 uint8, mod-cropped) and its LR (H/s x W/s x 3 uint8)."""

    name: str
    hr: np.ndarray
    lr: np.ndarray
    digest: str  # sha256 of the file's bytes
    from_cache: bool  # the LR was read from the disk cache, not computed


@dataclass
class LoadStats:
    images: int = 0
    lr_computed: int = 0
    lr_cached: int = 0
    seconds: float = 0.0
    hr_bytes: int = 0


def list_images(folder: str | Path, label: str) -> list[Path]:
    """The image files directly in ``folder``, sorted; a ConfigError when there are none."""
    path = Path(folder)
    if not path.exists():
        raise ConfigError(f"{label}: folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{label}: {str(path)!r} is not a folder")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ConfigError(f"{label}: folder {str(path)!r} has no images ({kinds})")
    return files


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Decoded pixels (H, W, C), C in 1..4, any dtype -> H x W x 3 uint8; alpha dropped."""
    arr = pixels
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise SrTileError(f"unsupported pixel type {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels in (1, 2):
        arr = np.repeat(arr[..., :1], 3, axis=2)
    elif channels == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_file(cache_dir: Path, digest: str, scale: int) -> Path:
    method = hashlib.sha256(LR_METHOD.encode()).hexdigest()[:8]
    return cache_dir / f"{digest[:32]}-x{scale}-{method}.npy"


def _read_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.shape != shape:
        return None
    return arr


def _write_cached(path: Path, arr: np.ndarray) -> None:
    """Atomic: a temp file next to the target, then a rename; failures only lose the cache."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    with contextlib.suppress(ImageWriteError):
        write_bytes_atomic(path, buf.getvalue())


def load_pairs(folder: str | Path, *, scale: int, cache_dir: str | Path | None, label: str,
               on_image: OnImage | None = None) -> tuple[list[ImagePair], LoadStats]:
    """Decode every image of ``folder`` and make (or read back) its LR."""
    from sr_tile.io import read_image

    files = list_images(folder, label)
    stats = LoadStats()
    started = time.perf_counter()
    pairs: list[ImagePair] = []
    cache = Path(cache_dir) if cache_dir is not None else None
    for index, path in enumerate(files, start=1):
        digest = _file_digest(path)
        rgb = to_rgb8(read_image(path, max_pixels=None).pixels)
        h, w = rgb.shape[0] - rgb.shape[0] % scale, rgb.shape[1] - rgb.shape[1] % scale
        if h < scale or w < scale:
            raise ConfigError(f"{label}: {path.name} is smaller than the scale ({scale})")
        hr = rgb[:h, :w]
        shape = (h // scale, w // scale, 3)
        lr = None
        cache_file = _cache_file(cache, digest, scale) if cache is not None else None
        if cache_file is not None and cache_file.is_file():
            lr = _read_cached(cache_file, shape)
        from_cache = lr is not None
        if lr is None:
            lr = imresize_np(hr, 1.0 / scale)
            if lr.shape != shape:  # pragma: no cover - imresize guarantees this
                raise SrTileError(f"{path}: LR shape {lr.shape}, expected {shape}")
            if cache_file is not None:
                _write_cached(cache_file, lr)
            stats.lr_computed += 1
        else:
            stats.lr_cached += 1
        pairs.append(ImagePair(name=path.name, hr=hr, lr=lr, digest=digest,
                               from_cache=from_cache))
        stats.hr_bytes += hr.nbytes + lr.nbytes
        if on_image is not None:
            on_image(index, len(files), path.name, from_cache)
    stats.images = len(pairs)
    stats.seconds = time.perf_counter() - started
    return pairs, stats


def _mix64(*values: int) -> int:
    """A splitmix64-style hash of integers: independent seeds for (seed, phase, step)."""
    mask = (1 << 64) - 1
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & mask)) & mask
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        x ^= x >> 31
    return x & ((1 << 63) - 1)


def step_generator(seed: int, phase: int, step: int) -> torch.Generator:
    """The generator of one training step; depends on nothing but its arguments."""
    return torch.Generator().manual_seed(_mix64(seed, phase, step))


def _augment(arr: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 dihedral transforms: bit 0 hflip, bit 1 vflip, bit 2 transpose."""
    if code & 1:
        arr = arr[:, ::-1]
    if code & 2:
        arr = arr[::-1]
    if code & 4:
        arr = arr.transpose(1, 0, 2)
    return arr


def _to_tensor(arr: np.ndarray, device: torch.device | str | None) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1] on ``device`` (converted there:
    a quarter of the bytes cross to a GPU)."""
    t = torch.from_numpy(arr)
    if device is not None:
        t = t.to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).contiguous().float().div_(255.0)


class PatchSampler:
    """Aligned random crops (LR ``lr_patch`` -> HR ``lr_patch * scale``) of the pairs.

    An image is picked with probability proportional to its number of patch positions, so
    every LR position of the training set is equally likely.
    """

    def __init__(self, pairs: Sequence[ImagePair], *, scale: int, lr_patch: int,
                 augment: bool = True) -> None:
        self.pairs = [p for p in pairs if min(p.lr.shape[:2]) >= lr_patch]
        if not self.pairs:
            raise ConfigError(f"no training image is large enough for {lr_patch} px LR patches "
                              f"({lr_patch * scale} px HR)")
        self.scale = scale
        self.lr_patch = lr_patch
        self.augment = augment
        sizes = [(p.lr.shape[0] - lr_patch + 1) * (p.lr.shape[1] - lr_patch + 1)
                 for p in self.pairs]
        self.weights = torch.tensor(sizes, dtype=torch.float64)

    def batch(self, n: int, generator: torch.Generator, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR (n,3,p,p), HR (n,3,p*s,p*s)) float32 in [0, 1], on ``device`` (default CPU)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        fy = torch.rand(n, generator=generator, dtype=torch.float64)
        fx = torch.rand(n, generator=generator, dtype=torch.float64)
        codes = (torch.randint(0, 8, (n,), generator=generator) if self.augment
                 else torch.zeros(n, dtype=torch.long))
        p, s = self.lr_patch, self.scale
        lrs = np.empty((n, p, p, 3), dtype=np.uint8)
        hrs = np.empty((n, p * s, p * s, 3), dtype=np.uint8)
        for k, (i, y_frac, x_frac, code) in enumerate(zip(idx.tolist(), fy.tolist(), fx.tolist(),
                                                          codes.tolist())):
            pair = self.pairs[i]
            h, w = pair.lr.shape[:2]
            y = min(int(y_frac * (h - p + 1)), h - p)
            x = min(int(x_frac * (w - p + 1)), w - p)
            lrs[k] = _augment(pair.lr[y:y + p, x:x + p], code)
            hrs[k] = _augment(pair.hr[y * s:(y + p) * s, x * s:(x + p) * s], code)
        return _to_tensor(lrs, device), _to_tensor(hrs, device)


@dataclass
class ValSet:
    """Fixed validation crops: ``lr`` (N,3,p,p) and ``hr`` (N,3,p*s,p*s) uint8 tensors."""

    lr: torch.Tensor
    hr: torch.Tensor
    names: list[str]
    scale: int
    protocol: str

    def __len__(self) -> int:
        return int(self.lr.shape[0])


def _crop_positions(h: int, w: int, p: int, count: int) -> list[tuple[str, int, int]]:
    centre = [("centre", (h - p) // 2, (w - p) // 2)]
    if count == 1:
        return centre
    return centre + [("top-left", 0, 0), ("top-right", 0, w - p),
                     ("bottom-left", h - p, 0), ("bottom-right", h - p, w - p)]


def make_val_set(pairs: Sequence[ImagePair], *, scale: int, val_patch: int,
                 val_crops: int) -> ValSet:
    """``val_crops`` LR crops of ``val_patch`` px per image (images smaller are skipped)."""
    lrs, hrs, names = [], [], []
    for pair in pairs:
        h, w = pair.lr.shape[:2]
        if min(h, w) < val_patch:
            continue
        for where, y, x in _crop_positions(h, w, val_patch, val_crops):
            lrs.append(pair.lr[y:y + val_patch, x:x + val_patch])
            hrs.append(pair.hr[y * scale:(y + val_patch) * scale,
                               x * scale:(x + val_patch) * scale])
            names.append(f"{pair.name}@{where}")
    if not lrs:
        raise ConfigError(f"no validation image is large enough for {val_patch} px LR crops")

    def stack(arrs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.ascontiguousarray(a) for a in arrs])).permute(
            0, 3, 1, 2).contiguous()

    where = "centre" if val_crops == 1 else "centre + 4 corners"
    protocol = (f"{len(lrs)} LR crops of {val_patch}x{val_patch} ({where} of "
                f"{len({n.split('@')[0] for n in names})} images), outputs clamped and rounded "
                f"to uint8, PSNR-Y with a {scale} px border, mean over crops")
    return ValSet(lr=stack(lrs), hr=stack(hrs), names=names, scale=scale, protocol=protocol)


@dataclass
class ScaleBatch:
    """One arbitrary-scale batch: ``lr`` (n, 3, p, p) in [0, 1] (8-bit values), a grid of
    query rows ``ys`` and columns ``xs`` (n, q) in the LR's pixel coordinates (centres at
    integers), the HR pixels there ``hr`` (n, 3, q, q), and the batch's ``scale``."""

    lr: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    hr: torch.Tensor
    scale: float


class ScaleSampler:
    """Arbitrary-scale batches as LIIF and TADT train: a scale s ~ U(low, high) per batch, HR
    crops of round(p * s) px (flipped / rotated), their LR by MATLAB antialiased bicubic to
    p x p (rounded to 8 bits, as a stored LR is), and ``queries`` random rows x columns of each
    HR crop as the targets (LIIF samples 48 x 48 pixels per crop; a grid keeps the
    upsamplers' row x column layout).

    ``hard_pool`` k > 1 draws k x n crops and keeps the n on which bicubic errs most (mean
    squared error at the targets). The photos here are mostly smooth (bicubic x4 at 41-50 dB on
    many), so uniform crops give a residual model little to learn from: TADT-light trained on
    them stayed at its bicubic start for 1,000 steps of L2 and 3,500 of L1, and with k = 4
    it gained +0.14 dB over bicubic on uniform x4 crops within 300 steps."""

    def __init__(self, pairs: Sequence[ImagePair], *, lr_patch: int, queries: int,
                 scales: tuple[float, float] = (1.0, 4.0), augment: bool = True,
                 hard_pool: int = 1) -> None:
        if hard_pool < 1:
            raise ConfigError(f"hard_pool must be >= 1, got {hard_pool}")
        largest = int(round(lr_patch * scales[1]))
        self.pairs = [p for p in pairs if min(p.hr.shape[:2]) >= largest]
        if not self.pairs:
            raise ConfigError(f"no training image is large enough for {largest} px HR crops")
        if queries > lr_patch:
            raise ConfigError(f"queries {queries} must be at most lr_patch {lr_patch}")
        self.lr_patch, self.queries, self.scales, self.augment = lr_patch, queries, scales, augment
        self.hard_pool = hard_pool
        self.weights = torch.tensor([float(p.hr.shape[0] * p.hr.shape[1]) for p in self.pairs],
                                    dtype=torch.float64)

    def batch(self, n: int, generator: torch.Generator,
              device: torch.device | str | None = None) -> ScaleBatch:
        low, high = self.scales
        s = low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))
        p, q = self.lr_patch, self.queries
        size = max(p, int(round(p * s)))
        keep, n = n, n * self.hard_pool
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        crops = np.empty((n, size, size, 3), dtype=np.uint8)
        for k, i in enumerate(idx.tolist()):
            hr = self.pairs[i].hr
            y = int(torch.randint(0, hr.shape[0] - size + 1, (), generator=generator))
            x = int(torch.randint(0, hr.shape[1] - size + 1, (), generator=generator))
            code = int(torch.randint(0, 8, (), generator=generator)) if self.augment else 0
            crops[k] = _augment(hr[y:y + size, x:x + size], code)
        hr_t = _to_tensor(crops, None)
        lr = imresize(hr_t, out_size=(p, p), antialias=True).clamp_(0, 1).mul_(255).round_()
        rows = torch.stack([torch.randperm(size, generator=generator)[:q].sort().values
                            for _ in range(n)])
        cols = torch.stack([torch.randperm(size, generator=generator)[:q].sort().values
                            for _ in range(n)])
        picked = hr_t[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        to_lr = lambda k: (k.double() + 0.5) * p / size - 0.5  # noqa: E731
        lr, ys, xs = lr.div_(255.0), to_lr(rows).float(), to_lr(cols).float()
        hr = picked.permute(0, 3, 1, 2).contiguous()
        if keep < n:
            err = (bicubic_grid(lr, ys, xs) - hr).square_().mean(dim=(1, 2, 3))
            k = err.topk(keep).indices.sort().values
            lr, ys, xs, hr = lr[k], ys[k], xs[k], hr[k]
        move = (lambda t: t.to(device)) if device is not None else (lambda t: t)
        return ScaleBatch(lr=move(lr), ys=move(ys), xs=move(xs), hr=move(hr), scale=size / p)
