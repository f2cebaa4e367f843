"""Preprocess: any image a user uploads becomes the right tensor; anything else fails with a clear, typed error."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from typing import Any, cast

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from PIL import Image, ImageFile

from functions.common.config import ImageLimits, invocation_environment
from functions.common.errors import (
    ConfigurationError,
    DecompressionBombError,
    InvalidInputError,
    InvalidRequestError,
    NotAnImageError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    TransientError,
)
from functions.common.manifest import FileEntry, InputSpec, Manifest, content_version
from functions.common.request import ModelRef, SourceObject
from functions.preprocess import core
from functions.preprocess.transform import to_tensor
from tests.conftest import FakeLambdaContext, s3_object_created, sqs_record

LIMITS = ImageLimits()
SPEC = InputSpec(height=64, width=64, resize_shorter=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
RESNET_SPEC = InputSpec(height=224, width=224, resize_shorter=256)
ODD_KEYS = ["holiday photos/café+1%.jpg", "a+b/c%2Fd%20e.png", "日本語/写真 (1).jpeg"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decoded_pixel(data: bytes, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    image = core.decode_image(data, LIMITS)
    assert image.mode == "RGB"
    return cast(tuple[int, ...], image.getpixel(xy))  # an RGB image's pixel is a tuple of its bands


def noisy_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus sensor-like noise: compresses and resamples like a photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    channels = [
        127 + 100 * np.sin(x / 150) * np.cos(y / 210),
        127 + 100 * np.sin((x + y) / 330),
        127 + 100 * np.cos(x / 90 - y / 400),
    ]
    pixels = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (IHDR) claiming ``width × height`` RGB pixels, followed by almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 12 MP (4000×3000) photo-like baseline JPEG."""
    return encode(noisy_photo(4000, 3000), "JPEG", quality=90)


# --------------------------------------------------------------------------- colour modes


def test_rgb_jpeg_decodes_as_is() -> None:
    assert decoded_pixel(encode(Image.new("RGB", (8, 8), (200, 100, 50)), "PNG")) == (200, 100, 50)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_red_cmyk_becomes_red_rgb(fmt: str) -> None:
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    red, green, blue = decoded_pixel(data)
    assert red >= 250 and green <= 5 and blue <= 5


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (32768, 128), (65535, 255), (1000, 4)])
def test_16_bit_grey_is_scaled_not_clipped(value: int, expected: int) -> None:
    data = encode(Image.fromarray(np.full((4, 4), value, np.uint16)), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert decoded_pixel(data) == (expected,) * 3


def test_32_bit_int_and_float_grey_are_scaled() -> None:
    assert decoded_pixel(encode(Image.fromarray(np.full((4, 4), 32768, np.int32)), "TIFF")) == (128, 128, 128)
    assert decoded_pixel(encode(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF")) == (128, 128, 128)
    # values outside 0..1 are stretched to the full 8-bit range, not clipped to white
    ramp = np.linspace(-10.0, 30.0, 16, dtype=np.float32).reshape(4, 4)
    image = core.decode_image(encode(Image.fromarray(ramp), "TIFF"), LIMITS)
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((3, 3)) == (255, 255, 255)


def _palette_image() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    return image


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_white_where_transparent(fmt: str) -> None:
    data = encode(_palette_image(), fmt, transparency=0)
    assert decoded_pixel(data, (0, 0)) == (255, 255, 255)
    assert decoded_pixel(data, (1, 1)) == (255, 0, 0)


def test_palette_without_transparency_keeps_its_colours() -> None:
    data = encode(_palette_image(), "PNG")
    assert decoded_pixel(data, (0, 0)) == (0, 0, 0)
    assert decoded_pixel(data, (1, 1)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "colour", "fmt"),
    [("RGBA", (0, 0, 0, 0), "PNG"), ("LA", (0, 0), "PNG"), ("RGBA", (0, 0, 0, 0), "WEBP")],
)
def test_transparent_pixels_become_white_not_black(mode: str, colour: tuple[int, ...], fmt: str) -> None:
    data = encode(Image.new(mode, (4, 4), colour), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert decoded_pixel(data) == (255, 255, 255)


def test_half_transparent_black_is_composited_on_white() -> None:
    red, green, blue = decoded_pixel(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert red == green == blue and 125 <= red <= 129


def test_palette_with_alpha_channel_is_composited() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    pa = rgba.convert("PA")
    assert core.to_rgb(pa).getpixel((0, 0)) == (255, 255, 255)


def test_tRNS_colour_in_rgb_and_grey_png_is_transparent() -> None:
    assert decoded_pixel(encode(Image.new("RGB", (4, 4), (10, 20, 30)), "PNG", transparency=(10, 20, 30))) == (
        255,
        255,
        255,
    )
    assert decoded_pixel(encode(Image.new("L", (4, 4), 5), "PNG", transparency=5)) == (255, 255, 255)


def test_greyscale_and_one_bit() -> None:
    assert decoded_pixel(encode(Image.new("L", (4, 4), 77), "PNG")) == (77, 77, 77)
    one_bit = Image.new("1", (4, 4), 0)
    one_bit.putpixel((2, 2), 1)
    data = encode(one_bit, "PNG")
    assert decoded_pixel(data, (0, 0)) == (0, 0, 0)
    assert decoded_pixel(data, (2, 2)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_uses_the_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    assert getattr(Image.open(io.BytesIO(buffer.getvalue())), "n_frames", 1) == 3
    assert decoded_pixel(buffer.getvalue()) == (255, 0, 0)


def test_exif_orientation_6_is_applied() -> None:
    # GIVEN a 40×20 landscape JPEG whose left quarter is blue, stored with "rotate 90° clockwise"
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif, quality=95)

    # WHEN decoded
    image = core.decode_image(data, LIMITS)

    # THEN it is upright: portrait, with the blue strip along the top
    assert image.size == (20, 40)
    top, bottom = cast(tuple[int, ...], image.getpixel((10, 2))), cast(tuple[int, ...], image.getpixel((10, 37)))
    assert top[2] > 200 and top[0] < 50
    assert bottom[0] > 200 and bottom[2] < 50


def test_corrupt_exif_does_not_reject_a_good_image() -> None:
    data = encode(Image.new("RGB", (8, 8), (0, 128, 0)), "JPEG", exif=b"Exif\x00\x00garbage-not-tiff", quality=95)
    assert decoded_pixel(data)[1] > 100


# --------------------------------------------------------------------------- JPEG draft


def test_draft_decode_of_a_12_mp_jpeg_matches_the_full_decode(big_jpeg: bytes) -> None:
    # WHEN the same photo is preprocessed through the draft path and through a full decode
    fast_image = core.decode_image(big_jpeg, LIMITS, target=RESNET_SPEC)
    fast = core.preprocess(big_jpeg, LIMITS, RESNET_SPEC)
    full = to_tensor(core.decode_image(big_jpeg, LIMITS), RESNET_SPEC)[np.newaxis]

    # THEN the draft path really decoded fewer pixels but kept enough for the resize
    assert fast_image.size[0] < 4000 and min(fast_image.size) >= RESNET_SPEC.resize_shorter
    # AND the tensors are the same to within about one 8-bit level on average
    assert fast.shape == full.shape == (1, 3, 224, 224) and fast.dtype == np.float32
    mean_abs_levels = float(np.abs(fast - full).mean()) * 255 * min(RESNET_SPEC.std)
    assert mean_abs_levels < 1.0


def test_draft_keeps_the_shorter_side_for_rotated_and_small_targets(big_jpeg: bytes) -> None:
    for spec in (SPEC, RESNET_SPEC, InputSpec(height=600, width=600, resize_shorter=700)):
        image = core.decode_image(big_jpeg, LIMITS, target=spec)
        assert min(image.size) >= spec.resize_shorter
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(noisy_photo(1600, 1200), "JPEG", exif=exif, quality=85)
    image = core.decode_image(rotated, LIMITS, target=RESNET_SPEC)
    assert image.size[1] > image.size[0] and min(image.size) >= RESNET_SPEC.resize_shorter


# --------------------------------------------------------------------------- not an image


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "text"),
        (b"\x00\x01\x02garbage" * 10, "not a JPEG"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a JPEG"),  # never reaches Ghostscript
    ],
)
def test_non_images_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(NotAnImageError, match=message):
        core.decode_image(data, LIMITS, name="s3://in/photo.png")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated_images_are_rejected(fmt: str) -> None:
    data = encode(noisy_photo(120, 90), fmt)
    with pytest.raises(NotAnImageError, match="s3://in/photo"):
        core.decode_image(data[: len(data) // 2], LIMITS, name="s3://in/photo")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # detection did not rely on changing it


def test_truncated_jpeg_is_rejected_on_the_draft_path_too(big_jpeg: bytes) -> None:
    with pytest.raises(NotAnImageError, match="truncated"):
        core.decode_image(big_jpeg[: len(big_jpeg) - 4096], LIMITS, target=RESNET_SPEC)


# --------------------------------------------------------------------------- decompression bombs


@pytest.fixture
def load_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records (and refuses) any attempt to decode pixel data."""
    calls: list[str] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        calls.append(self.format or "?")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (100_000, 100_000),  # 10 G pixels: above twice Pillow's own limit (Pillow raises)
        (10_000, 10_000),  # 100 M: between 1x and 2x Pillow's limit (Pillow only warns)
        (8_000, 6_000),  # 48 M: under Pillow's limit, over the pipeline's 40 M
    ],
)
def test_png_claiming_too_many_pixels_is_refused_before_decoding(width: int, height: int, load_spy: list[str]) -> None:
    filters_before = list(warnings.filters)
    pillow_limit = Image.MAX_IMAGE_PIXELS

    with pytest.raises(DecompressionBombError, match="MAX_IMAGE_PIXELS"):
        core.decode_image(png_claiming(width, height), LIMITS, name="s3://in/bomb.png")

    assert load_spy == []  # no pixel buffer was ever allocated
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # global Pillow state untouched
    assert warnings.filters == filters_before


def test_project_limit_applies_to_real_images() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(DecompressionBombError, match="100x100 = 10000 pixels"):
        core.decode_image(data, ImageLimits(max_image_pixels=9_999))
    assert core.decode_image(data, ImageLimits(max_image_pixels=10_000)).size == (100, 100)


# --------------------------------------------------------------------------- S3 fetch


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="input-bucket")
        client.put_bucket_versioning(Bucket="input-bucket", VersioningConfiguration={"Status": "Enabled"})
        client.create_bucket(Bucket="work-bucket")
        yield client


@pytest.mark.parametrize("key", ODD_KEYS)
def test_fetch_keeps_odd_keys_verbatim_and_pins_the_version(s3: Any, key: str) -> None:
    data = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    version = s3.put_object(Bucket="input-bucket", Key=key, Body=data)["VersionId"]
    s3.put_object(Bucket="input-bucket", Key=key, Body=b"a newer version")

    fetched = core.fetch_object(s3, SourceObject("input-bucket", key, version), LIMITS)
    located = fetched.source
    assert (located.key, located.version_id, located.size) == (key, version, len(data))
    assert located.etag and not located.etag.startswith('"')
    assert fetched.data == data
    assert core.fetch_object(s3, located, LIMITS).data == data  # pinned to that version


def test_fetch_without_version_reads_and_reports_the_latest(s3: Any) -> None:
    s3.put_object(Bucket="input-bucket", Key="cat.jpg", Body=b"old")
    latest = s3.put_object(Bucket="input-bucket", Key="cat.jpg", Body=b"new!")["VersionId"]
    fetched = core.fetch_object(s3, SourceObject("input-bucket", "cat.jpg"), LIMITS)
    assert fetched.source.version_id == latest and fetched.source.size == 4
    assert fetched.data == b"new!"


def test_object_over_the_limit_is_refused_before_its_body_is_read(s3: Any) -> None:
    s3.put_object(Bucket="input-bucket", Key="huge.jpg", Body=b"\xff" * 2048)
    reserved: list[int] = []
    with pytest.raises(ObjectTooLargeError) as caught:
        core.fetch_object(
            s3, SourceObject("input-bucket", "huge.jpg"), ImageLimits(max_object_bytes=1024), reserve=reserved.append
        )
    assert "2048" in str(caught.value) and "1024" in str(caught.value)
    assert reserved == []  # refused from Content-Length: the body was never asked for


def test_missing_object_names_the_uri(s3: Any) -> None:
    with pytest.raises(ObjectNotFoundError, match=re.escape("s3://input-bucket/photos/nope.jpg does not exist")):
        core.fetch_object(s3, SourceObject("input-bucket", "photos/nope.jpg"), LIMITS)


def test_missing_version_names_the_uri_and_version(s3: Any) -> None:
    s3.put_object(Bucket="input-bucket", Key="cat.jpg", Body=b"x")
    with pytest.raises(ObjectNotFoundError, match=r"s3://input-bucket/cat.jpg \(version v-gone\) does not exist"):
        core.fetch_object(s3, SourceObject("input-bucket", "cat.jpg", "v-gone"), LIMITS)


def test_deleted_object_and_missing_bucket_are_not_found(s3: Any) -> None:
    s3.put_object(Bucket="input-bucket", Key="cat.jpg", Body=b"x")
    s3.delete_object(Bucket="input-bucket", Key="cat.jpg")
    with pytest.raises(ObjectNotFoundError, match=re.escape("cat.jpg")):
        core.fetch_object(s3, SourceObject("input-bucket", "cat.jpg"), LIMITS)
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket"):
        core.fetch_object(s3, SourceObject("no-such-bucket", "cat.jpg"), LIMITS)


@pytest.mark.parametrize(
    ("code", "status", "expected", "message"),
    [
        ("403", 403, ObjectNotFoundError, "cannot be read by the pipeline"),
        ("AccessDenied", 403, ObjectNotFoundError, "cannot be read by the pipeline"),
        ("SlowDown", 503, TransientError, "GetObject s3://other-bucket/cat.jpg"),
        ("InternalError", 500, TransientError, "GetObject"),
        ("PermanentRedirect", 301, InvalidRequestError, "another region"),
    ],
)
def test_s3_failures_map_onto_the_error_taxonomy(
    code: str, status: int, expected: type[Exception], message: str
) -> None:
    client = boto3.client("s3", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
        with pytest.raises(expected, match=message):
            core.fetch_object(client, SourceObject("other-bucket", "cat.jpg"), LIMITS)


# --------------------------------------------------------------------------- store


def test_store_tensor_key_is_deterministic_and_round_trips(s3: Any) -> None:
    source = SourceObject("input-bucket", "holiday photos/café+1%.jpg", "v1", "etag1", 10)
    model = ModelRef("demo", "0123456789ab")
    tensor = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)

    first = core.store_tensor(s3, "work-bucket", "tensors/", source, model, tensor)
    second = core.store_tensor(s3, "work-bucket", "tensors/", source, model, tensor)  # a retry

    assert first == second
    assert first["bucket"] == "work-bucket" and first["key"].startswith("tensors/") and first["key"].endswith(".npy")
    assert first["shape"] == [1, 3, 64, 64] and first["dtype"] == "float32"
    listed = s3.list_objects_v2(Bucket="work-bucket", Prefix="tensors/")["Contents"]
    assert len(listed) == 1
    stored = np.load(
        io.BytesIO(s3.get_object(Bucket="work-bucket", Key=first["key"])["Body"].read()), allow_pickle=False
    )
    np.testing.assert_array_equal(stored, tensor)


def test_tensor_key_changes_with_object_version_and_model_version() -> None:
    source = SourceObject("input-bucket", "cat.jpg", "v1", "e1", 1)
    model = ModelRef("demo", "0123456789ab")
    key = core.tensor_key("tensors/", source, model)
    assert key == core.tensor_key("tensors/", SourceObject("input-bucket", "cat.jpg", "v1", "e1", 1), model)
    others = {
        core.tensor_key("tensors/", SourceObject("input-bucket", "cat.jpg", "v2", "e1", 1), model),
        core.tensor_key("tensors/", SourceObject("input-bucket", "cat.jpg", "v1", "e2", 1), model),
        core.tensor_key("tensors/", SourceObject("input-bucket", "cat.jpgx", "v1", "e1", 1), model),
        core.tensor_key("tensors/", source, ModelRef("demo", "ba9876543210")),
        core.tensor_key("tensors/", source, ModelRef("other", "0123456789ab")),
    }
    assert key not in others and len(others) == 5


# --------------------------------------------------------------------------- handler, end to end on moto


def _files(digit: str) -> dict[str, FileEntry]:
    return {
        role: FileEntry(path=name, sha256=digit * 64, size=1)
        for role, name in {"symbol": "model-symbol.json", "params": "model-0000.params", "labels": "labels.txt"}.items()
    }


#: Versions are content hashes: the model store refuses a manifest whose files hash to another version.
MODEL_VERSION = content_version(_files("0"), "fp32")
OTHER_VERSION = content_version(_files("f"), "fp32")
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:inferpipe-pipeline:3f0c9a1e"
ALL_SINKS = ["s3", "dynamodb", "sns", "sqs", "eventbridge"]
#: What the ASL passes as the deployment's defaults: its placeholders, rendered as strings.
DEFAULTS = {"sinks": ",".join(ALL_SINKS), "top_k": "5", "model": "demo", "model_version": "prod"}
CONTEXT = FakeLambdaContext("inferpipe-preprocess", memory_limit_in_mb=1024)


def _manifest(
    num_classes: int = 8, name: str = "demo", version: str = MODEL_VERSION, spec: InputSpec = SPEC
) -> Manifest:
    files = _files({MODEL_VERSION: "0", OTHER_VERSION: "f"}[version])
    return Manifest(
        name=name,
        version=version,
        architecture="resnet10_v1",
        num_classes=num_classes,
        input=spec,
        files=files,
        created="2026-11-29T04:00:00Z",
        source="test_preprocess",
    )


def _publish(s3: Any, manifest: Manifest, alias: str = "prod") -> None:
    prefix = f"models/{manifest.name}"
    s3.put_object(
        Bucket="model-bucket",
        Key=f"{prefix}/versions/{manifest.version}/manifest.json",
        Body=manifest.to_json().encode(),
    )
    s3.put_object(
        Bucket="model-bucket",
        Key=f"{prefix}/aliases/{alias}.json",
        Body=json.dumps({"version": manifest.version}).encode(),
    )


@pytest.fixture
def stack(s3: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """GIVEN a model bucket with demo@prod published in the documented layout, and the function's env."""
    handler = pytest.importorskip("functions.preprocess.handler")
    from functions.preprocess.service import PreprocessService

    monkeypatch.setattr(handler, "service", PreprocessService())  # a cold Lambda
    s3.create_bucket(Bucket="model-bucket")
    _publish(s3, _manifest())
    env = {
        "MODEL_BUCKET": "model-bucket",
        "WORK_BUCKET": "work-bucket",
        "WORK_PREFIX": "tensors/",
        "MAX_OBJECT_BYTES": "52428800",
        "MAX_IMAGE_PIXELS": "40000000",
    }
    with invocation_environment(env):
        yield {"s3": s3, "handler": handler, "env": env}


def s3_event(
    key: str, version_id: str | None = None, bucket: str = "input-bucket", sequencer: str | None = None
) -> dict[str, Any]:
    """The S3 'Object Created' event EventBridge starts the state machine with."""
    return s3_object_created(key, version_id, bucket, sequencer)


def manual(key: str = "photos/cat.jpg", bucket: str = "input-bucket", **options: Any) -> dict[str, Any]:
    """A manual request, as `aws stepfunctions start-execution` would pass it."""
    return {
        "bucket": bucket,
        "key": key,
        "sinks": ["s3"],
        "top_k": 3,
        "model": "demo",
        "model_version": "prod",
        **options,
    }


def _run(handler: Any, raw: Any, execution: str = EXECUTION) -> dict[str, Any]:
    """Preprocess's invocation, with the Parameters the ASL's Preprocess state passes."""
    return handler.lambda_handler({"input": raw, "defaults": DEFAULTS, "execution_id": execution}, CONTEXT)


def _document(s3: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The batch document the summary points to (preprocessed.json in the work bucket)."""
    ref = summary["batch"]
    return json.loads(s3.get_object(Bucket=ref["bucket"], Key=ref["key"])["Body"].read())


def _tensor(s3: Any, group: dict[str, Any]) -> np.ndarray:
    body = s3.get_object(Bucket=group["tensor"]["bucket"], Key=group["tensor"]["key"])["Body"].read()
    return np.load(io.BytesIO(body), allow_pickle=False)


def _work_keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="work-bucket", Prefix="tensors/").get("Contents", []))


def _only_failure(s3: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The one entry of a batch of one that failed; no tensor was stored for it."""
    assert (summary["objects"], summary["succeeded"], summary["failed"]) == (1, 0, 1)
    document = _document(s3, summary)
    (entry,) = document["items"]
    assert entry["status"] == "FAILED" and entry["error"]["state"] == "Preprocess"
    assert document["groups"] == []
    return entry


def test_handler_turns_an_uploaded_photo_into_a_batch_document(stack: dict[str, Any]) -> None:
    s3, handler = stack["s3"], stack["handler"]
    # GIVEN a rotated photo uploaded under an awkward key
    key = "incoming/holiday photos/café+1%.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(noisy_photo(640, 480), "JPEG", exif=exif, quality=90)
    version = s3.put_object(Bucket="input-bucket", Key=key, Body=data)["VersionId"]

    # WHEN its S3 event runs through the handler (twice: a retry)
    summary = _run(handler, s3_event(key, version))
    retry = _run(handler, s3_event(key, version))

    # THEN the state machine gets a reference to the batch document and its counts, with the deployment's sinks
    assert summary == {
        "batch": {"bucket": "work-bucket", "key": "tensors/batches/3f0c9a1e/preprocessed.json"},
        "sinks": ALL_SINKS,
        "objects": 1,
        "succeeded": 1,
        "failed": 0,
        "duplicates": 0,
    }
    # AND the document names the object version, the resolved model version and the tensor row
    document = _document(s3, summary)
    assert document["schema"] == "inferpipe.batch/1" and document["execution_id"] == EXECUTION
    assert document["trigger"] == "s3-event" and document["duplicates"] == 0
    (entry,) = document["items"]
    assert entry["status"] == "READY" and entry["trigger"] == "s3-event"
    assert entry["source"] == {
        "bucket": "input-bucket",
        "key": key,
        "version_id": version,
        "etag": entry["source"]["etag"],
        "size": len(data),
        "last_modified": entry["source"]["last_modified"],
        "sequencer": None,
    }
    # (when the version was written, as GetObject said: what orders it against the key's other versions)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["source"]["last_modified"])
    assert entry["model"] == {"name": "demo", "version": MODEL_VERSION}
    assert entry["top_k"] == 5 and entry["tensor"] == {"group": 0, "row": 0}
    width, height = entry["decoded_size"]
    assert width < height  # upright: portrait (JPEG draft-decoded at a reduced scale)
    assert set(entry["timings_ms"]) == {"fetch", "decode", "transform"}
    (group,) = document["groups"]
    assert group["model"] == {"name": "demo", "version": MODEL_VERSION} and group["items"] == [0]
    assert group["tensor"]["shape"] == [1, 3, 64, 64] and group["tensor"]["dtype"] == "float32"
    # AND the stored tensor is exactly what the shared transform gives for the upright photo
    np.testing.assert_array_equal(_tensor(s3, group), core.preprocess(data, LIMITS, SPEC))
    # AND the retry rewrote the same document and tensor instead of adding any
    assert retry == summary and _document(s3, retry)["groups"] == document["groups"]
    assert _work_keys(s3) == ["tensors/batches/3f0c9a1e/preprocessed.json", "tensors/batches/3f0c9a1e/tensor-0.npy"]


def test_handler_fails_an_object_whose_top_k_is_above_the_model_classes(stack: dict[str, Any]) -> None:
    stack["s3"].put_object(Bucket="input-bucket", Key="photos/cat.jpg", Body=encode(noisy_photo(80, 60), "PNG"))
    summary = _run(stack["handler"], manual(top_k=9))
    entry = _only_failure(stack["s3"], summary)
    assert entry["error"]["type"] == "InvalidRequestError"
    assert "top_k=9 is more than the 8 classes" in entry["error"]["message"]
    assert entry["source"]["key"] == "photos/cat.jpg" and entry["top_k"] == 9


def test_handler_reports_a_non_image_with_its_uri(stack: dict[str, Any]) -> None:
    stack["s3"].put_object(Bucket="input-bucket", Key="photos/cat.jpg", Body=b"<html>Access denied</html>")
    entry = _only_failure(stack["s3"], _run(stack["handler"], manual()))
    assert entry["error"]["type"] == "NotAnImageError"
    assert re.search(r"s3://input-bucket/photos/cat.jpg\?versionId=", entry["error"]["message"]), entry["error"][
        "message"
    ]


@pytest.fixture
def s3_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """(operation, bucket) of every S3 request any client sends."""
    from botocore.client import BaseClient

    seen: list[tuple[str, str | None]] = []
    original = BaseClient._make_api_call

    def make_api_call(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if self.meta.service_model.service_name == "s3":
            seen.append((operation, params.get("Bucket")))
        return original(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", make_api_call)
    return seen


def test_handler_fails_an_unknown_sink_before_touching_the_object(
    stack: dict[str, Any], s3_requests: list[tuple[str, str | None]]
) -> None:
    summary = _run(stack["handler"], manual(sinks=["s3", "kafka"]))
    # THEN the object fails with the reason, nothing was read from the input or model bucket
    entry = _only_failure(stack["s3"], summary)
    assert entry["error"]["type"] == "InvalidRequestError" and "unknown sink 'kafka'" in entry["error"]["message"]
    assert entry["source"] == {"bucket": "input-bucket", "key": "photos/cat.jpg", "version_id": None}
    assert [bucket for _, bucket in s3_requests if bucket in ("input-bucket", "model-bucket")] == []
    assert summary["sinks"] == []  # no object to deliver


def test_handler_rejects_a_malformed_event(stack: dict[str, Any]) -> None:
    # the execution's input itself, not wrapped the way the Preprocess state wraps it
    with pytest.raises(InvalidRequestError, match="preprocess input"):
        stack["handler"].lambda_handler({"bucket": "input-bucket", "key": "k"}, CONTEXT)
    # defaults the ASL did not render
    with pytest.raises(InvalidRequestError, match=re.escape("defaults.top_k must be an integer")):
        stack["handler"].lambda_handler(
            {"input": manual(), "defaults": {**DEFAULTS, "top_k": "${DefaultTopK}"}}, CONTEXT
        )


def test_handler_rejects_an_input_naming_no_object_and_writes_nothing(stack: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError, match="none of its 3 elements is an SQS record of an S3 event"):
        _run(stack["handler"], ["not", "an", "event"])
    with pytest.raises(InvalidInputError, match="no object to classify"):
        _run(stack["handler"], {"hello": "world"})
    assert _work_keys(stack["s3"]) == []


def test_handler_applies_the_uploaders_options_only_to_s3_triggered_runs(stack: dict[str, Any]) -> None:
    # GIVEN an object uploaded with per-object options (as `inferpipe classify --top-k 2` does)
    s3, handler = stack["s3"], stack["handler"]
    data = encode(noisy_photo(80, 60), "PNG")
    s3.put_object(
        Bucket="input-bucket",
        Key="photos/cat.jpg",
        Body=data,
        Metadata={"inferpipe-top-k": "2", "inferpipe-model-version": MODEL_VERSION},
    )

    # WHEN the S3 event's run and a manual run (top_k 3) process it
    from_upload = _document(s3, _run(handler, s3_event("photos/cat.jpg"), EXECUTION + "-upload"))["items"][0]
    by_hand = _document(s3, _run(handler, manual(), EXECUTION + "-manual"))["items"][0]

    # THEN only the S3-triggered run takes the uploader's options
    assert from_upload["top_k"] == 2 and from_upload["model"]["version"] == MODEL_VERSION
    assert by_hand["top_k"] == 3 and by_hand["trigger"] == "manual"


def test_handler_names_bad_object_metadata(stack: dict[str, Any]) -> None:
    stack["s3"].put_object(Bucket="input-bucket", Key="photos/cat.jpg", Body=b"x", Metadata={"inferpipe-top-k": "lots"})
    entry = _only_failure(stack["s3"], _run(stack["handler"], s3_event("photos/cat.jpg")))
    assert entry["error"]["type"] == "InvalidRequestError" and "inferpipe-top-k='lots'" in entry["error"]["message"]


# --------------------------------------------------------------------------- a batch


def test_a_bad_image_fails_alone_and_the_good_ones_share_one_tensor(stack: dict[str, Any]) -> None:
    s3, handler = stack["s3"], stack["handler"]
    # GIVEN two photos and, between them, an HTML error page saved as .jpg
    first, second = encode(noisy_photo(80, 60, seed=1), "PNG"), encode(noisy_photo(120, 90, seed=2), "JPEG")
    s3.put_object(Bucket="input-bucket", Key="batch/1.png", Body=first)
    s3.put_object(Bucket="input-bucket", Key="batch/2.jpg", Body=b"<!DOCTYPE html><html>403</html>")
    s3.put_object(Bucket="input-bucket", Key="batch/3.jpg", Body=second)

    # WHEN a manual batch of the three is preprocessed
    raw = {
        "objects": [{"bucket": "input-bucket", "key": k} for k in ("batch/1.png", "batch/2.jpg", "batch/3.jpg")],
        "top_k": 2,
    }
    summary = _run(handler, raw)

    # THEN two objects are ready and one failed, in the input's order
    assert (summary["objects"], summary["succeeded"], summary["failed"]) == (3, 2, 1)
    assert summary["sinks"] == ALL_SINKS
    document = _document(s3, summary)
    assert document["trigger"] == "manual"
    assert [(e["index"], e["source"]["key"], e["status"]) for e in document["items"]] == [
        (0, "batch/1.png", "READY"),
        (1, "batch/2.jpg", "FAILED"),
        (2, "batch/3.jpg", "READY"),
    ]
    bad = document["items"][1]
    assert bad["error"]["type"] == "NotAnImageError" and "s3://input-bucket/batch/2.jpg" in bad["error"]["message"]
    assert "tensor" not in bad and bad["top_k"] == 2
    # AND the two good ones are the rows of one (2, 3, H, W) tensor, each exactly as a batch of one would be
    (group,) = document["groups"]
    assert group["items"] == [0, 2] and group["tensor"]["shape"] == [2, 3, 64, 64]
    assert [document["items"][i]["tensor"] for i in (0, 2)] == [{"group": 0, "row": 0}, {"group": 0, "row": 1}]
    stored = _tensor(s3, group)
    assert stored.shape == (2, 3, 64, 64) and stored.dtype == np.float32
    np.testing.assert_array_equal(stored[0], core.preprocess(first, LIMITS, SPEC)[0])
    np.testing.assert_array_equal(stored[1], core.preprocess(second, LIMITS, SPEC)[0])


def test_objects_asking_for_different_models_get_one_tensor_per_model(stack: dict[str, Any]) -> None:
    s3, handler = stack["s3"], stack["handler"]
    # GIVEN a second model with a larger input, and uploads asking for either, or for one that does not exist
    other_spec = InputSpec(height=96, width=96, resize_shorter=96)
    _publish(s3, _manifest(name="other", version=OTHER_VERSION, spec=other_spec))
    asks = {"q/a.png": None, "q/b.png": "other", "q/c.png": None, "q/d.png": "nosuchmodel"}
    for n, (key, model) in enumerate(asks.items()):
        s3.put_object(
            Bucket="input-bucket",
            Key=key,
            Body=encode(noisy_photo(100, 80, seed=n), "PNG"),
            Metadata={"inferpipe-model": model} if model else {},
        )

    # WHEN their queued events are preprocessed as one batch
    summary = _run(handler, [sqs_record(s3_event(key)) for key in asks])

    # THEN each model has its own tensor of its own input size, and the unknown model fails its object alone
    assert (summary["objects"], summary["succeeded"], summary["failed"]) == (4, 3, 1)
    document = _document(s3, summary)
    assert document["trigger"] == "queue"
    groups = {g["model"]["name"]: g for g in document["groups"]}
    assert groups["demo"]["model"]["version"] == MODEL_VERSION and groups["other"]["model"]["version"] == OTHER_VERSION
    assert (groups["demo"]["items"], groups["demo"]["tensor"]["shape"]) == ([0, 2], [2, 3, 64, 64])
    assert (groups["other"]["items"], groups["other"]["tensor"]["shape"]) == ([1], [1, 3, 96, 96])
    failed = document["items"][3]
    assert (
        failed["status"] == "FAILED"
        and failed["error"]["type"] == "ModelNotFoundError"
        and "nosuchmodel" in failed["error"]["message"]
    )
    assert _tensor(s3, groups["other"]).shape == (1, 3, 96, 96)


def test_the_same_upload_queued_twice_is_preprocessed_once(stack: dict[str, Any]) -> None:
    s3, handler = stack["s3"], stack["handler"]
    version = s3.put_object(Bucket="input-bucket", Key="twice.png", Body=encode(noisy_photo(80, 60), "PNG"))[
        "VersionId"
    ]
    summary = _run(handler, [sqs_record(s3_event("twice.png", version)), sqs_record(s3_event("twice.png", version))])
    document = _document(s3, summary)
    assert (summary["objects"], summary["succeeded"], document["duplicates"]) == (1, 1, 1)
    assert document["groups"][0]["tensor"]["shape"] == [1, 3, 64, 64]


# --------------------------------------------------------------------------- claims (duplicate events)

OTHER_EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:inferpipe-pipeline:7d1e44b0"


@pytest.fixture
def claims_stack(stack: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """GIVEN the preprocess stack with a claims table, made as the local stack makes it."""
    from inferpipe.local.provision import _ensure_claims_table
    from inferpipe.stack.resources import render_resources

    ddb = boto3.client("dynamodb", region_name="us-east-1")
    claims = dataclasses.replace(render_resources().claims, table="claims-table")
    _ensure_claims_table(ddb, claims)
    with invocation_environment({**stack["env"], "CLAIMS_TABLE": "claims-table", "CLAIM_TTL_S": "1296000"}):
        yield {**stack, "ddb": ddb}


def _upload(s3: Any, key: str, seed: int = 0) -> str:
    return str(
        s3.put_object(Bucket="input-bucket", Key=key, Body=encode(noisy_photo(80, 60, seed=seed), "PNG"))["VersionId"]
    )


def test_an_upload_another_execution_claimed_is_skipped_naming_that_execution(
    claims_stack: dict[str, Any], s3_requests: list[tuple[str, str | None]]
) -> None:
    s3, handler = claims_stack["s3"], claims_stack["handler"]
    # GIVEN two uploads whose events one execution preprocessed
    a, b = _upload(s3, "dup/a.png", 1), _upload(s3, "dup/b.png", 2)
    first = _run(
        handler,
        [sqs_record(s3_event("dup/a.png", a, sequencer="0A1")), sqs_record(s3_event("dup/b.png", b, sequencer="0B1"))],
    )
    assert (first["objects"], first["succeeded"], first["duplicates"]) == (2, 2, 0)

    # WHEN b's event arrives again in another execution's batch, next to a new upload's
    c = _upload(s3, "dup/c.png", 3)
    s3_requests.clear()
    second = _run(
        handler,
        [sqs_record(s3_event("dup/b.png", b, sequencer="0B1")), sqs_record(s3_event("dup/c.png", c, sequencer="0C1"))],
        execution=OTHER_EXECUTION,
    )

    # THEN only the new upload is preprocessed (b is not even read), and the document names b's owner
    assert (second["objects"], second["succeeded"], second["failed"], second["duplicates"]) == (1, 1, 0, 1)
    document = _document(s3, second)
    assert [entry["source"]["key"] for entry in document["items"]] == ["dup/c.png"]
    assert document["claimed_elsewhere"] == [
        {
            "index": 0,
            "source": {"bucket": "input-bucket", "key": "dup/b.png", "version_id": b, "sequencer": "0B1"},
            "owner": EXECUTION,
        }
    ]
    assert [op for op, bucket in s3_requests if bucket == "input-bucket"] == ["GetObject"]  # c's only


def test_a_retry_redrive_or_replay_of_the_claiming_execution_preprocesses_its_objects_again(
    claims_stack: dict[str, Any],
) -> None:
    s3, handler = claims_stack["s3"], claims_stack["handler"]
    version = _upload(s3, "dup/again.png")
    event = [sqs_record(s3_event("dup/again.png", version, sequencer="0D1"))]
    _run(handler, event)
    # WHEN the same execution runs Preprocess again (a retry, or a redrive: same ARN), then a replay of it
    retry = _run(handler, event)
    replay = _run(handler, event, execution=EXECUTION + "-r1")
    # THEN neither is a duplicate
    assert (retry["succeeded"], retry["duplicates"]) == (1, 0)
    assert (replay["succeeded"], replay["duplicates"]) == (1, 0)


def test_manual_inputs_and_events_without_an_upload_identity_never_claim(claims_stack: dict[str, Any]) -> None:
    s3, handler, ddb = claims_stack["s3"], claims_stack["handler"], claims_stack["ddb"]
    version = _upload(s3, "dup/manual.png")
    _run(handler, s3_event("dup/manual.png", version, sequencer="0E1"))
    # WHEN a user asks for the same version by hand from another execution
    again = _run(
        handler, {"bucket": "input-bucket", "key": "dup/manual.png", "version_id": version}, execution=OTHER_EXECUTION
    )
    # THEN it is classified: asking again is what a manual input means
    assert (again["succeeded"], again["duplicates"]) == (1, 0)
    # AND an event typed by hand with neither a version id nor a sequencer is not claimed
    _run(handler, s3_event("dup/manual.png"), execution=OTHER_EXECUTION)
    assert ddb.scan(TableName="claims-table")["Count"] == 1


def test_a_batch_of_nothing_but_duplicates_preprocesses_nothing(claims_stack: dict[str, Any]) -> None:
    s3, handler = claims_stack["s3"], claims_stack["handler"]
    version = _upload(s3, "dup/only.png")
    event = s3_event("dup/only.png", version, sequencer="0F1")
    _run(handler, event)
    keys_before = _work_keys(s3)
    # WHEN the same event starts a second execution (the direct trigger, delivered twice)
    second = _run(handler, event, execution=OTHER_EXECUTION)
    # THEN it has no object to classify, and no tensor is written for it
    assert (second["objects"], second["succeeded"], second["failed"], second["duplicates"]) == (0, 0, 0, 1)
    assert _document(s3, second)["items"] == [] and _document(s3, second)["groups"] == []
    assert [key for key in _work_keys(s3) if key not in keys_before] == ["tensors/batches/7d1e44b0/preprocessed.json"]


def test_an_expired_claim_is_taken_over_even_before_ttl_deletes_it(claims_stack: dict[str, Any]) -> None:
    from functions.common.batch import Defaults, parse_input
    from functions.preprocess.claims import Claims

    claims = Claims(claims_stack["ddb"], "claims-table", ttl_s=60)
    (item,) = parse_input(s3_event("dup/old.png", "v1", sequencer="0G1"), Defaults(("s3",), 5, "demo", "prod")).items
    assert claims.claim(item, EXECUTION, now=1_000) is None
    assert claims.claim(item, OTHER_EXECUTION, now=1_059) == EXECUTION  # still held
    assert claims.claim(item, OTHER_EXECUTION, now=1_061) is None  # expired: taken over


def test_a_missing_claims_table_fails_the_batch_as_a_configuration_error(claims_stack: dict[str, Any]) -> None:
    s3, handler = claims_stack["s3"], claims_stack["handler"]
    version = _upload(s3, "dup/nowhere.png")
    missing_table = {**claims_stack["env"], "CLAIMS_TABLE": "no-such-table", "CLAIM_TTL_S": "60"}
    with (
        invocation_environment(missing_table),
        pytest.raises(ConfigurationError, match=r"no-such-table.*ResourceNotFoundException"),
    ):
        _run(handler, s3_event("dup/nowhere.png", version, sequencer="0H1"))


def test_a_throttled_claim_fails_the_invocation_as_transient_so_the_state_machine_retries_it(
    claims_stack: dict[str, Any],
) -> None:
    from functions.common.batch import Defaults, parse_input
    from functions.preprocess.claims import Claims

    ddb = boto3.client("dynamodb", region_name="us-east-1")
    (item,) = parse_input(s3_event("dup/busy.png", "v1", sequencer="0I1"), Defaults(("s3",), 5, "demo", "prod")).items
    with Stubber(ddb) as stub:
        stub.add_client_error(
            "put_item", service_error_code="ProvisionedThroughputExceededException", http_status_code=400
        )
        with pytest.raises(TransientError, match="claims-table"):
            Claims(ddb, "claims-table", ttl_s=60).claim(item, EXECUTION)


def test_a_batch_reads_each_object_once_and_keeps_its_order_whatever_the_fetch_order(
    stack: dict[str, Any], s3_requests: list[tuple[str, str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, handler = stack["s3"], stack["handler"]
    from functions.preprocess import batch as preprocess_batch

    # GIVEN 20 photos, the fourth larger than the whole fetch buffer and the second a bad one,
    # with the early objects answering slowest (so fetches finish out of order)
    monkeypatch.setattr(preprocess_batch, "FETCH_BUFFER_BYTES", 20_000)
    keys = [f"many/{i:02d}.png" for i in range(20)]
    bodies = {
        key: encode(noisy_photo(80 if i != 3 else 400, 60 if i != 3 else 300, seed=i), "PNG")
        for i, key in enumerate(keys)
    }
    bodies[keys[1]] = b"not an image"
    assert len(bodies[keys[3]]) > 20_000
    for key, body in bodies.items():
        s3.put_object(Bucket="input-bucket", Key=key, Body=body)
    real_fetch = preprocess_batch.fetch_object

    def slow_first(client: Any, source: SourceObject, limits: ImageLimits, reserve: Any = None) -> Any:
        time.sleep(max(0, 5 - keys.index(source.key)) * 0.02)
        return real_fetch(client, source, limits, reserve)

    monkeypatch.setattr(preprocess_batch, "fetch_object", slow_first)
    s3_requests.clear()
    # WHEN preprocessed as one batch
    summary = _run(handler, {"objects": [{"bucket": "input-bucket", "key": key} for key in keys]})
    # THEN every object was read with one GetObject (no HEAD), and the document keeps the input's order
    reads = [op for op, bucket in s3_requests if bucket == "input-bucket"]
    assert reads == ["GetObject"] * 20
    document = _document(s3, summary)
    assert [(e["index"], e["source"]["key"]) for e in document["items"]] == list(enumerate(keys))
    assert (summary["succeeded"], summary["failed"]) == (19, 1) and document["items"][1]["error"][
        "type"
    ] == "NotAnImageError"
    (group,) = document["groups"]
    rows = _tensor(s3, group)
    for row, index in enumerate(group["items"]):
        np.testing.assert_array_equal(rows[row], core.preprocess(bodies[keys[index]], LIMITS, SPEC)[0])


def test_an_object_outside_the_input_bucket_fails_alone(stack: dict[str, Any]) -> None:
    s3, handler = stack["s3"], stack["handler"]
    s3.put_object(Bucket="input-bucket", Key="mine.png", Body=encode(noisy_photo(80, 60), "PNG"))
    s3.put_object(Bucket="work-bucket", Key="theirs.png", Body=encode(noisy_photo(80, 60), "PNG"))
    with invocation_environment({**stack["env"], "INPUT_BUCKET": "input-bucket"}):
        summary = _run(
            handler,
            {
                "objects": [
                    {"bucket": "input-bucket", "key": "mine.png"},
                    {"bucket": "work-bucket", "key": "theirs.png"},
                ]
            },
        )
    statuses = [(e["status"], e.get("error", {}).get("message", "")) for e in _document(s3, summary)["items"]]
    assert statuses[0] == ("READY", "")
    assert (
        statuses[1][0] == "FAILED"
        and "bucket 'work-bucket' is not this pipeline's input bucket 'input-bucket'" in statuses[1][1]
    )


@pytest.mark.parametrize("error", [TransientError, ConfigurationError])
def test_a_transient_or_configuration_error_fails_the_whole_invocation(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    # GIVEN a batch of two where reading the second object fails for a reason that is not the object's
    s3, handler = stack["s3"], stack["handler"]
    for key in ("ok.png", "slow.png"):
        s3.put_object(Bucket="input-bucket", Key=key, Body=encode(noisy_photo(80, 60), "PNG"))
    from functions.preprocess import batch as preprocess_batch

    real_fetch = preprocess_batch.fetch_object

    def fetch(client: Any, source: SourceObject, limits: ImageLimits, reserve: Any = None) -> Any:
        if source.key == "slow.png":
            raise error(f"GetObject {source.uri}: SlowDown")
        return real_fetch(client, source, limits, reserve)

    monkeypatch.setattr(preprocess_batch, "fetch_object", fetch)
    # WHEN preprocessed, THEN the invocation fails (the state machine retries it or records it) and no document is left
    with pytest.raises(error, match=re.escape("slow.png")):
        _run(
            handler,
            {"objects": [{"bucket": "input-bucket", "key": "ok.png"}, {"bucket": "input-bucket", "key": "slow.png"}]},
        )
    assert not any(key.endswith("preprocessed.json") for key in _work_keys(s3))


# --------------------------------------------------------------------------- ownership


def test_an_object_outside_the_input_bucket_or_prefix_is_refused_by_name() -> None:
    mine = SourceObject(bucket="in-bucket", key="uploads/cat.jpg")
    core.check_owned(mine, "in-bucket", "uploads/")
    core.check_owned(mine, "in-bucket", None)  # no prefix configured: the whole bucket
    core.check_owned(SourceObject(bucket="other", key="x.jpg"), None, None)  # unconfigured: no check

    with pytest.raises(InvalidRequestError, match="bucket 'other' is not this pipeline's input bucket 'in-bucket'"):
        core.check_owned(SourceObject(bucket="other", key="uploads/cat.jpg"), "in-bucket", "uploads/")
    with pytest.raises(InvalidRequestError, match="outside the pipeline's input prefix 'uploads/'") as caught:
        core.check_owned(SourceObject(bucket="in-bucket", key="private/cat.jpg"), "in-bucket", "uploads/")
    assert "s3://in-bucket/private/cat.jpg" in str(caught.value)
