"""Images for report.html: shrunk for the page, embedded within a size budget.

Why: report.md's figures are 300-dpi PNGs for print (a two-column figure is 2100 px wide)
and a study adds sample grids per run, weight set and chosen epoch. Embedded as they were, a
two-run smoke study's page weighed 2.9 MB, and a large study's grew without bound.
A page shows a figure at most about 1000 px wide and a grid in a table cell at most 360 px,
so each image is scaled down to that and re-encoded: figures as PNG with a 256-colour
palette (plots hold few colours; text stays sharp, as JPEG would not keep it), pictures as
the smaller of a lossless PNG and a JPEG. Images are embedded in page order while the page
stays within PAGE_BUDGET; an image that does not fit becomes a link to its file, and the page
says so (analysis/page/html.py). Every embedded image links its full-size file.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

PAGE_BUDGET = 5_000_000  # bytes: opens at once from a mail or a shared folder; <= 10 MB asked
FIGURE_DPI = 135  # report figures (saved at 300 dpi): a two-column figure ~950 px wide
FIGURE_WIDTH = 1000  # px, the most a figure is shown at (the page body is 1200 px)
CELL_WIDTH = 360  # px, the most a picture in a table cell is shown at (html.STYLE)
JPEG_QUALITY = 85
MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml",
        "gif": "image/gif"}


@dataclass(frozen=True)
class PageImage:
    """An image as the page embeds it: its bytes, type and shown size (0: unknown)."""

    data: bytes
    mime: str
    width: int = 0
    height: int = 0

    def data_uri(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")


def _original(path: Path) -> PageImage:
    mime = MIME.get(path.suffix.lower().lstrip("."), "application/octet-stream")
    return PageImage(path.read_bytes(), mime)


def _target_width(image: Image.Image, max_width: int, figure: bool) -> int:
    """A figure at FIGURE_DPI (from the dpi it was saved at) and at most FIGURE_WIDTH; a
    picture at most ``max_width``; never wider than it is."""
    width = image.width
    dpi = image.info.get("dpi", (0, 0))[0]
    if figure and dpi and dpi > FIGURE_DPI:
        width = round(width * FIGURE_DPI / dpi)
    return max(1, min(width, max_width, image.width))


def _encode(image: Image.Image, figure: bool) -> tuple[bytes, str]:
    """PNG with a 256-colour palette for a figure; the smaller of PNG and JPEG otherwise."""
    rgb = image.convert("RGB")
    if figure:
        buffer = io.BytesIO()
        rgb.quantize(colors=256, dither=Image.Dither.NONE).save(buffer, "PNG", optimize=True)
        return buffer.getvalue(), "image/png"
    png, jpeg = io.BytesIO(), io.BytesIO()
    rgb.save(png, "PNG", optimize=True)
    rgb.save(jpeg, "JPEG", quality=JPEG_QUALITY)
    return min((png.getvalue(), "image/png"), (jpeg.getvalue(), "image/jpeg"),
               key=lambda c: len(c[0]))


def page_image(path: Path, max_width: int = FIGURE_WIDTH, figure: bool = True) -> PageImage:
    """``path`` scaled down and re-encoded for the page (`_target_width`, `_encode`); its own
    bytes when they are smaller or Pillow cannot read it (an SVG)."""
    original = _original(path)
    try:
        with Image.open(path) as image:
            image.load()
            full = image.width
            width = _target_width(image, max_width, figure)
            height = max(1, round(image.height * width / full))
            if width < full:
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            data, mime = _encode(image, figure)
    except (UnidentifiedImageError, OSError):
        return original
    if width == full and len(original.data) <= len(data):
        return PageImage(original.data, original.mime, width, height)
    return PageImage(data, mime, width, height)
