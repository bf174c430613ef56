"""Test images: plain colours, a red block on salmon, and inputs no decoder should accept."""
import io
import struct
import zlib

from PIL import Image


def image_bytes(rgb=(220, 30, 30), size=(64, 48), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, fmt)
    return buffer.getvalue()


RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 180, 30)


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


SALMON = (255, 120, 120)
RED_CORNER = 0.65  # fraction of the width and height the red block covers, from the top-left


def red_corner_image(size=(320, 200), fmt="PNG") -> bytes:
    """A red block over the top-left 65% x 65% of a salmon image. Its mean colour is nearest red,
    so the stand-in says "a red image"; the attention stand-in's "red" map lies on the block."""
    image = Image.new("RGB", size, SALMON)
    image.paste(RED, (0, 0, round(size[0] * RED_CORNER), round(size[1] * RED_CORNER)))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def hostile_images() -> dict[str, bytes]:
    good_png = image_bytes(GREEN)
    return {"empty": b"", "text": b"hello, I am not an image\n",
            "truncated_png": good_png[:len(good_png) // 2], "huge_pixels_png": huge_png_header()}
