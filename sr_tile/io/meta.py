"""Image metadata that must survive an upscale: colour profile, EXIF, resolution.

Kept apart from pixels so the pipeline can carry it from reader to writer
without knowing any file format, and so `ImageMeta.scaled` is the one place
that decides what "the same picture, N times larger" means for metadata.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

EXIF_HEADER = b"Exif\x00\x00"
TAG_ORIENTATION = 0x0112
TAG_EXIF_IFD = 0x8769
TAG_PIXEL_X_DIMENSION = 0xA002
TAG_PIXEL_Y_DIMENSION = 0xA003


@dataclass(frozen=True)
class ImageMeta:
    """What an output file should inherit from its input.

    ``exif`` is a raw EXIF block starting with ``Exif\\0\\0`` (as Pillow's
    ``Image.Exif.tobytes()`` returns it) whose orientation is already 1: the
    reader applies the orientation to the pixels, so carrying the original
    value would rotate the output twice in viewers.
    """

    format: str
    icc_profile: bytes | None = None
    exif: bytes | None = None
    dpi: tuple[float, float] | None = None
    bigtiff: bool = False
    compression: str | None = None

    def scaled(self, scale: float, width: int, height: int) -> ImageMeta:
        """Meta for an output ``scale`` times larger.

        DPI is multiplied so the print size stays the same; EXIF
        PixelXDimension/PixelYDimension are updated (only when present) so
        they do not contradict the new pixel size.
        """
        dpi = None
        if self.dpi is not None:
            dpi = (self.dpi[0] * scale, self.dpi[1] * scale)
        exif = _exif_with_dimensions(self.exif, width, height) if self.exif else self.exif
        return dataclasses.replace(self, dpi=dpi, exif=exif)


@dataclass
class ImageData:
    """Decoded pixels, (H, W, C) with C in 1..4, ready for the model.

    ``pixels`` is C-contiguous and writable, uint8/uint16/float32, with the
    orientation already applied, so it is what a viewer shows.
    """

    pixels: np.ndarray
    meta: ImageMeta
    warnings: tuple[str, ...] = ()  # one line each, naming the file (decoder chatter, frames)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def color_channels(self) -> int:
        """1 for grayscale (with or without alpha), 3 for colour."""
        return 1 if self.channels <= 2 else 3


def load_exif(raw: bytes) -> Image.Exif:
    """Parse a raw EXIF block (with or without the ``Exif\\0\\0`` header). Pillow's warnings
    about a damaged block are left to the reader, which reports them once per file."""
    exif = Image.Exif()
    exif.load(raw)
    return exif


def normalise_exif(raw: bytes | None) -> tuple[bytes | None, int]:
    """Return (EXIF block with orientation reset to 1, original orientation).

    The original bytes are kept untouched when no reset is needed, because
    Pillow's re-serialisation drops the thumbnail IFD and can mangle maker
    notes. If the block cannot be parsed, orientation is taken as 1 (what
    every viewer would do too) and the bytes are kept; if it parses but
    cannot be re-serialised after the reset, it is dropped rather than kept
    with an orientation that would now be wrong.
    """
    if not raw:
        return None, 1
    if not raw.startswith(EXIF_HEADER):
        raw = EXIF_HEADER + raw
    try:
        exif = load_exif(raw)
        orientation = exif.get(TAG_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - any malformed EXIF: treat as absent orientation
        return raw, 1
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    if orientation == 1:
        return raw, 1
    try:
        exif[TAG_ORIENTATION] = 1
        return exif.tobytes(), orientation
    except Exception:  # noqa: BLE001 - cannot rewrite: drop rather than lie
        return None, orientation


def exif_orientation(raw: bytes | None) -> int:
    """Orientation 1..8 stored in a raw EXIF block, 1 when absent or invalid."""
    if not raw:
        return 1
    try:
        value = load_exif(raw).get(TAG_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF counts as no orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_with_dimensions(raw: bytes, width: int, height: int) -> bytes:
    """Set PixelX/YDimension in the Exif IFD if the block already has them."""
    try:
        with warnings.catch_warnings():  # the reader has reported a damaged block already
            warnings.simplefilter("ignore")
            exif = load_exif(raw)
            ifd = exif.get_ifd(TAG_EXIF_IFD)
        if TAG_PIXEL_X_DIMENSION not in ifd and TAG_PIXEL_Y_DIMENSION not in ifd:
            return raw
        ifd[TAG_PIXEL_X_DIMENSION] = int(width)
        ifd[TAG_PIXEL_Y_DIMENSION] = int(height)
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - unparseable EXIF is passed through as it was
        return raw


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1..8) to (H, W, C) pixels.

    Done in numpy rather than with Pillow's transpose so 16-bit and float
    images take the same path. Returns a view when possible; callers make it
    contiguous once at the end.
    """
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return pixels[::-1].transpose(1, 0, 2)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return pixels[:, ::-1].transpose(1, 0, 2)
    return pixels


def owned_pixels(pixels: np.ndarray) -> np.ndarray:
    """C-contiguous, writable pixels, copying at most once.

    Pillow hands out read-only views of its buffers; callers of the reader
    get an ordinary array they may modify in place.
    """
    if pixels.flags.c_contiguous and pixels.flags.writeable:
        return pixels
    return np.array(pixels, order="C")


def oriented_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) as displayed: orientations 5-8 swap the axes."""
    return (height, width) if orientation >= 5 else (width, height)


def oriented_dpi(dpi: tuple[float, float] | None, orientation: int) -> tuple[float, float] | None:
    """Swap x/y resolution with the axes for orientations 5-8."""
    if dpi is None or orientation < 5:
        return dpi
    return (dpi[1], dpi[0])


def icc_colour_space(profile: bytes | None) -> str | None:
    """The ICC header's data colour space ('RGB', 'GRAY', 'CMYK'...) or None.

    Used by writers to avoid embedding a profile that contradicts the pixel
    layout they write (e.g. a gray profile in an RGB file).
    """
    if not profile or len(profile) < 20:
        return None
    return profile[16:20].decode("latin-1").strip() or None
