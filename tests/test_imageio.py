"""Safe decoding: every format and colour mode to RGB, and every kind of bad file refused."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.errors import IngestError
from engine.ingest.imageio import (
    QUERY_MAX_PIXELS,
    QUERY_MAX_SIDE,
    DecodeDataset,
    UnreadableImage,
    collate,
    decode_image,
    decode_query_image,
    decoded_batches,
    make_thumbnail,
    thumbnail_path,
    to_rgb,
    write_thumbnail,
)


def noise(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def jpeg_bytes(w: int = 200, h: int = 150) -> bytes:
    buf = io.BytesIO()
    noise(w, h).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize(
    "suffix, fmt",
    [
        (".jpg", "JPEG"),
        (".png", "PNG"),
        (".webp", "WEBP"),
        (".gif", "GIF"),
        (".bmp", "BMP"),
        (".tiff", "TIFF"),
    ],
)
def test_every_format_decodes_to_rgb(tmp_path, suffix, fmt):
    path = tmp_path / f"a{suffix}"
    im = noise()
    (im.convert("P") if fmt == "GIF" else im).save(path, fmt)
    out = decode_image(path)
    assert out.image.mode == "RGB" and out.image.size == (40, 30) and (out.width, out.height) == (40, 30)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_colour_modes_convert_to_rgb(mode):
    base = noise(16, 8)
    if mode == "I;16":
        im = Image.fromarray(np.full((8, 16), 65535, np.uint16))
    elif mode in ("I", "F"):
        im = Image.fromarray(
            np.linspace(0, 1000, 128).reshape(8, 16).astype(np.int32 if mode == "I" else np.float32)
        )
    else:
        im = base.convert(mode)
    assert im.mode == mode
    rgb = to_rgb(im)
    assert rgb.mode == "RGB" and rgb.size == (16, 8)
    if mode == "I;16":  # 16-bit white stays white rather than being clipped or wrapped
        assert np.asarray(rgb).min() == 255


def test_transparency_composites_on_background():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(to_rgb(rgba, background=(0, 0, 0)))[0, 0].tolist() == [0, 0, 0]
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied(tmp_path):
    im = noise(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    im.save(path, "JPEG", exif=exif.tobytes())
    out = decode_image(path)
    assert out.image.size == (30, 40) and (out.width, out.height) == (30, 40)


def test_animation_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    pixel = np.asarray(decode_image(path).image)[0, 0]
    assert pixel[0] > 200 and pixel[2] < 50


def test_large_jpeg_decodes_at_reduced_scale_with_full_size_reported(tmp_path):
    path = tmp_path / "big.jpg"
    noise(2400, 1600).save(path, "JPEG")
    out = decode_image(path, draft_min_side=300)
    assert (out.width, out.height) == (2400, 1600)
    assert min(out.image.size) >= 300 and out.image.size[0] < 2400


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.jpg", b"", "empty"),
        ("text.jpg", b"this is not an image at all\n" * 10, "not a JPEG"),
        ("random.png", bytes(range(256)) * 8, "not a JPEG"),
        ("half.jpg", jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated"),
        ("header.jpg", jpeg_bytes()[:200], "truncated"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UnreadableImage) as err:
        decode_image(path)
    assert reason in err.value.reason
    assert isinstance(err.value, IngestError)


def test_corrupt_png_data_is_refused(tmp_path):
    buf = io.BytesIO()
    noise(64, 64).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[100:140] = b"\x00" * 40  # inside the IDAT stream: bad CRC and bad deflate data
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableImage):
        decode_image(path)


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_bytes(
    pixels: np.ndarray, colour: int, depth: int, interlace: bool, drop_rows: int = 0, drop_bytes: int = 0
) -> bytes:
    """A PNG written by hand (filter 0), Adam7-interlaced or not, its zlib stream valid but
    without the last ``drop_rows`` scanlines and then the last ``drop_bytes`` bytes."""
    h, w = pixels.shape[:2]

    def scanlines(a: np.ndarray) -> list[bytes]:
        if a.shape[0] == 0 or a.shape[1] == 0:
            return []
        if depth < 8:
            bits = np.unpackbits(a.astype(np.uint8)[..., None], axis=-1)[..., 8 - depth :]
            packed = np.packbits(bits.reshape(a.shape[0], -1), axis=1)
        else:
            packed = a.astype(">u2" if depth == 16 else np.uint8).reshape(a.shape[0], -1).view(np.uint8)
        return [b"\0" + row.tobytes() for row in packed]

    passes = [pixels[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7] if interlace else [pixels]
    rows = [row for p in passes for row in scanlines(p)]
    raw = b"".join(rows[: len(rows) - drop_rows])
    raw = raw[: len(raw) - drop_bytes]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("w, h", [(1, 1), (3, 5), (9, 17), (8, 8), (33, 2)])
@pytest.mark.parametrize("colour, depth", [(0, 1), (0, 4), (0, 8), (0, 16), (2, 8), (4, 8), (6, 16)])
@pytest.mark.parametrize("interlace", [False, True])
def test_png_is_refused_when_its_image_data_ends_early(w, h, colour, depth, interlace):
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    rng = np.random.default_rng(w * h + depth)
    pixels = rng.integers(0, 2**depth, (h, w, channels) if channels > 1 else (h, w))
    whole = png_bytes(pixels, colour, depth, interlace)
    if channels == 1 and depth <= 8:  # the hand-written file says what was meant (PIL widens to 8 bits)
        with Image.open(io.BytesIO(whole)) as im:
            assert np.array_equal(np.asarray(im.convert("L")), pixels * (255 // (2**depth - 1)))
    out = decode_image(whole)
    assert (out.width, out.height) == (w, h)
    for rows, extra in [
        (1, 0),
        (0, 1),
        (1, 1),
    ]:  # a stream that ends on a row boundary, and one that does not
        with pytest.raises(UnreadableImage, match="truncated"):
            decode_image(png_bytes(pixels, colour, depth, interlace, drop_rows=rows, drop_bytes=extra))


def test_large_png_without_its_last_rows_is_refused_after_other_images():
    """Rows never received are zero in PIL's buffer, even when it reuses memory that held
    other pictures: the cheap test of the last rows sees them."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(1, 256, (700, 900, 3))
    for _ in range(3):
        decode_image(png_bytes(pixels, 2, 8, False))
    for interlace in (False, True):
        with pytest.raises(UnreadableImage, match="truncated image data"):
            decode_image(png_bytes(pixels, 2, 8, interlace, drop_rows=1))
        with pytest.raises(UnreadableImage, match="truncated image data"):
            decode_image(png_bytes(pixels, 2, 8, interlace, drop_rows=300))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(UnreadableImage, match="cannot decode"):
        decode_image(tmp_path / "nope.jpg")


def test_pixel_limit_and_pil_bomb_warning(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    noise(100, 100).save(path)
    with pytest.raises(UnreadableImage, match="too many pixels"):
        decode_image(path, max_pixels=9_999)
    assert decode_image(path, max_pixels=10_000).image.size == (100, 100)
    # PIL's own warning (above its global limit) counts as a refusal too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)
    with pytest.raises(UnreadableImage, match="too many pixels"):
        decode_image(path, max_pixels=5_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)  # above twice PIL's limit: its hard error
    with pytest.raises(UnreadableImage, match="too many pixels"):
        decode_image(path, max_pixels=50_000)


def test_thumbnails_are_small_sharded_and_atomic(tmp_path):
    assert thumbnail_path(tmp_path, 12345) == tmp_path / "thumbs" / "000012" / "12345.jpg"
    assert make_thumbnail(noise(600, 300)).size == (200, 100)
    assert make_thumbnail(noise(512, 300)).size == (256, 150)
    assert make_thumbnail(noise(40, 30)).size == (40, 30)  # never enlarged
    path = thumbnail_path(tmp_path, 7)
    write_thumbnail(noise(600, 300), path)
    write_thumbnail(noise(300, 600, seed=1), path)  # replaced in place
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (100, 200)
    assert os.listdir(path.parent) == ["7.jpg"]  # no temporary files left


def _flat(im: Image.Image) -> np.ndarray:
    return np.asarray(im.resize((4, 4)), dtype=np.float32).ravel()


def test_decode_dataset_and_in_process_batches(tmp_path):
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        noise(300 if i == 0 else 40, 30, seed=i).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"nope")
    paths.insert(2, str(tmp_path / "bad.png"))
    ds = DecodeDataset(paths, np.arange(6), _flat, tmp_path / "side", max_pixels=10**6)
    batches = list(decoded_batches(ds, 4, workers=0))
    assert [len(b.index) for b in batches] == [4, 2]
    assert batches[0].ok.tolist() == [True, True, False, True]
    assert batches[0].reasons[2].startswith("not a")
    assert batches[0].pixels.shape == (3, 48)
    assert (tmp_path / "side" / "thumbs" / "000000" / "0.jpg").is_file()
    assert not (tmp_path / "side" / "thumbs" / "000000" / "2.jpg").exists()  # refused
    assert not (tmp_path / "side" / "thumbs" / "000000" / "1.jpg").exists()  # 40 px: no thumbnail
    assert collate([ds[2]]).pixels is None


def test_worker_processes_give_the_same_batches(tmp_path):
    pytest.importorskip("torch")
    paths = []
    for i in range(7):
        paths.append(str(tmp_path / f"{i}.jpg"))
        noise(seed=i).save(paths[-1])
    ds = DecodeDataset(paths, np.arange(7), _flat, None, max_pixels=10**6)
    inline = list(decoded_batches(ds, 3, workers=0))
    pooled = list(decoded_batches(ds, 3, workers=2))
    assert len(inline) == len(pooled) == 3
    for a, b in zip(inline, pooled, strict=True):
        assert a.index.tolist() == b.index.tolist()
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_a_query_image_above_the_query_limit_is_refused_with_the_apps_limit(png_bomb, monkeypatch):
    with pytest.raises(UnreadableImage, match=f"the limit is {QUERY_MAX_PIXELS:,}.*scale the image down"):
        decode_query_image(png_bomb)
    # above PIL's own limit the message still quotes the caller's limit, not PIL's
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)
    buf = io.BytesIO()
    noise(100, 100).save(buf, format="PNG")
    with pytest.raises(UnreadableImage) as e:
        decode_image(buf.getvalue(), max_pixels=5_000)
    assert "10,000 pixels; the limit is 5,000" in e.value.reason and "6000" not in e.value.reason


def test_a_large_query_image_is_reduced_before_its_colours_are_converted():
    w, h = 2 * QUERY_MAX_SIDE + 200, QUERY_MAX_SIDE + 300
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[:, : w // 2] = (200, 30, 30, 255)  # opaque red on the left
    rgba[:, w // 2 :] = (0, 0, 0, 0)  # transparent (black underneath) on the right
    rgba[:, w // 2 + 1 : w // 2 + 6] = (0, 0, 255, 128)  # half-transparent blue, off the reduction grid
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    small = decode_query_image(buf.getvalue())
    assert small.mode == "RGB" and max(small.size) <= 2 * QUERY_MAX_SIDE and max(small.size) < w
    full = np.asarray(decode_image(buf.getvalue()).image.resize(small.size, Image.BOX), np.int16)
    got = np.asarray(small, np.int16)
    # transparent black must not darken the neighbouring colours: alpha-weighted averaging
    assert np.abs(got - full).max() <= 3
    assert (got[:, -10:] == 255).all()  # the transparent side is the white background


def test_small_query_images_are_decoded_as_they_are():
    img = noise(300, 200)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert np.array_equal(np.asarray(decode_query_image(buf.getvalue())), np.asarray(img))
