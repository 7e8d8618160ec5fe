"""The PDF's pictures, deflated on every core before fpdf2 places them.

In: an fpdf2 document and a Pillow image (a panel at its box's size). Out: ``embed``, the name
under which the picture is in the document's image cache, for ``FPDF.image(name, ...)``; and
``describe``, the same work done ahead, on any thread (a build does it as each panel lands).

fpdf2 deflates each picture itself, on one core, with no PNG predictor: for a page of eight
1024-px panels that was most of the second a build waited after its last panel, for streams 60%
larger than needed. Here the pixels are deflated as PNG rows with the "Up" filter
(``pngenc.deflate_rows``, bands side by side) and handed to fpdf2 as a ready image, described as
fpdf2's own loader describes a lossless RGB picture (``/FlateDecode`` with ``/Predictor 15``,
which tells a reader each row's filter). Identical pictures are embedded once, as fpdf2 does.
Other modes go to fpdf2 unchanged.
"""

from __future__ import annotations

import hashlib

from .pngenc import deflate_rows

_SPACES = {"RGB": ("DeviceRGB", 3), "L": ("DeviceGray", 1)}


def describe(image) -> tuple[str, dict] | None:
    """``image``'s name in a document's image cache and fpdf2's description of it, deflated
    here (None: a mode fpdf2 loads itself). Thread-safe: a build describes each panel on a
    thread of its own as it lands, and ``embed`` takes the description ready."""
    if image.mode not in _SPACES:
        return None
    from fpdf.image_datastructures import RasterImageInfo

    space, colors = _SPACES[image.mode]
    info = RasterImageInfo(
        data=deflate_rows(image), w=image.width, h=image.height, cs=space, iccp=None, bpc=8,
        dpn=colors, f="FlateDecode", inverted=False,
        dp=f"/Predictor 15 /Colors {colors} /Columns {image.width}")
    return _name(image), info


def _name(image) -> str:
    digest = hashlib.md5(image.tobytes(), usedforsecurity=False).hexdigest()
    return f"storyboard-picture-{image.mode}-{image.width}x{image.height}-{digest}"


def embed(pdf, image, ready: dict[str, dict] | None = None):
    """What to give ``pdf.image`` for ``image``: a name in its image cache (RGB and grey
    pictures, deflated here, or taken from ``ready``: name -> ``describe``'s description), or
    the image itself (fpdf2 loads it)."""
    if image.mode not in _SPACES:
        return image
    name = _name(image)
    images = pdf.image_cache.images
    if name not in images:
        info = (ready or {}).pop(name, None) or describe(image)[1]
        # What fpdf2's preload_image adds to an image it caches; ``FPDF.image`` counts the use.
        info.update(i=len(images) + 1, usages=0, iccp_i=None)
        images[name] = info
    return name
