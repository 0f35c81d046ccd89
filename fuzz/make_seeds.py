"""Writes the small seeds in fuzz/seeds/ (`tiny_*`): 32x24 images of every JPEG kind that
`decode_image` routes differently (libjpeg-turbo for YCbCr/RGB/grayscale, zune-jpeg for CMYK;
baseline, progressive, subsampling, restart markers, EXIF orientation, truncated) and the other
formats. Small inputs make each fuzz execution cheap. Needs Pillow only:

    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow
    /tmp/pil/bin/python fuzz/make_seeds.py
"""

import io
import pathlib
import random

from PIL import Image

OUT = pathlib.Path(__file__).parent / "seeds"
W, H = 32, 24

rng = random.Random(11)
rgb = Image.new("RGB", (W, H))
rgb.putdata(
    [
        ((x * 8) % 256, (y * 10) % 256, rng.randrange(256) if (x // 4 + y // 4) % 2 else 128)
        for y in range(H)
        for x in range(W)
    ]
)
gray = rgb.convert("L")


def jpeg(name, image, **kw):
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=kw.pop("quality", 85), **kw)
    data = buf.getvalue()
    (OUT / f"tiny_{name}.jpg").write_bytes(data)
    return data


jpeg("baseline_444", rgb, subsampling=0)
jpeg("baseline_422", rgb, subsampling=1)
base420 = jpeg("baseline_420", rgb, subsampling=2)
jpeg("progressive_420", rgb, subsampling=2, progressive=True)
jpeg("progressive_444", rgb, subsampling=0, progressive=True)
jpeg("optimized_420", rgb, subsampling=2, optimize=True)
jpeg("restart_420", rgb, subsampling=2, restart_marker_blocks=1)
jpeg("gray", gray)
jpeg("gray_progressive", gray, progressive=True)
jpeg("cmyk", rgb.convert("CMYK"))
exif = Image.Exif()
exif[0x0112] = 6  # orientation: rotate 90 CW
jpeg("exif_orient6", rgb, subsampling=2, exif=exif.tobytes())
(OUT / "tiny_truncated_420.jpg").write_bytes(base420[: len(base420) * 2 // 3])

rgb.save(OUT / "tiny_rgb.png")
rgb.convert("RGBA").save(OUT / "tiny_rgba.png")
rgb.convert("P", palette=Image.ADAPTIVE, colors=16).save(OUT / "tiny_palette.gif")
rgb.save(OUT / "tiny_lossy.webp", quality=60)
rgb.convert("RGBA").save(OUT / "tiny_lossless_alpha.webp", lossless=True)
rgb.save(OUT / "tiny_rgb.bmp")
rgb.save(OUT / "tiny_lzw.tiff", compression="tiff_lzw")
