"""Reference pictures as the trainer sees them.

In: a picture's path (png, jpg, webp). Out: an RGB ``PIL.Image`` the right way up (EXIF
orientation applied, as a phone's photo is shown) with transparency flattened onto white, or
``OSError`` / ``PIL.UnidentifiedImageError`` / ``Image.DecompressionBombError`` when it cannot be
read. The dataset checks and the trainer both read pictures through ``open_picture``, so what
is checked is what is trained on.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import open_regular

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BACKGROUND = (255, 255, 255)  # what transparent pixels become


def open_picture(path: str | Path):
    """The picture at ``path``, decoded, upright and opaque RGB."""
    from PIL import Image, ImageOps

    with open_regular(Path(path)) as fh, Image.open(fh) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            flat = Image.new("RGB", im.size, BACKGROUND)
            flat.paste(im, mask=im.getchannel("A"))
            return flat
        return im.convert("RGB")
