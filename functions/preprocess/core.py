"""Pure core of the preprocess task: fetch the object, decode it safely to RGB, build and store the tensor.

Nothing here reads the environment or logs image bytes; the handler passes settings and clients in.

Example::

    fetched = fetch_object(s3, SourceObject("in-bucket", "photos/cat.jpg"), limits)
    tensor = preprocess(fetched.data, limits, manifest.input)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from functions.common.aws import error_code, http_status, is_not_found, raise_transient
from functions.common.config import ImageLimits
from functions.common.errors import (
    DecompressionBombError,
    InvalidRequestError,
    NotAnImageError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    TransientError,
)
from functions.common.manifest import InputSpec
from functions.common.request import ModelRef, SourceObject, TensorRef
from functions.preprocess.transform import to_tensor

#: The formats Pillow may try (JPEG includes MPO, which the JPEG plugin opens). Everything else
#: (EPS, which runs Ghostscript; PSD; exotic formats with little-used, little-fuzzed decoders) is
#: refused before any decoder runs.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
_JPEG_FORMATS = ("JPEG", "MPO")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_WRONG_REGION_CODES = ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301")
_WHITE = (255, 255, 255, 255)


# --------------------------------------------------------------------------- fetch


def check_owned(source: SourceObject, input_bucket: str | None, key_prefix: str | None) -> None:
    """Refuse an object outside what the pipeline owns: its input bucket and, if set, its key prefix.

    The trigger rule only starts executions for those objects; this catches manual requests (and
    replays of edited input) that name anything else, which the function could not read anyway.
    Unset values switch the check off (unit tests, a function run on its own).
    """
    if input_bucket and source.bucket != input_bucket:
        raise InvalidRequestError(
            f"s3://{source.bucket}/{source.key}: bucket '{source.bucket}' is not this pipeline's input "
            f"bucket '{input_bucket}'; upload the image there"
        )
    if key_prefix and not source.key.startswith(key_prefix):
        raise InvalidRequestError(
            f"s3://{source.bucket}/{source.key}: key is outside the pipeline's input prefix '{key_prefix}'"
        )


def _where(source: SourceObject) -> str:
    where = f"s3://{source.bucket}/{source.key}"
    return f"{where} (version {source.version_id})" if source.version_id else where


def _raise_s3_error(exc: ClientError, source: SourceObject, action: str) -> NoReturn:
    """Map an S3 failure on the source object onto the error taxonomy (always raises)."""
    code = error_code(exc)
    status = http_status(exc)
    where = _where(source)
    if code == "NoSuchBucket":
        raise ObjectNotFoundError(f"{where} does not exist: there is no bucket {source.bucket!r}") from exc
    if is_not_found(exc):
        raise ObjectNotFoundError(f"{where} does not exist") from exc
    if source.version_id and status == 400 and code in ("400", "BadRequest", "InvalidArgument"):
        raise ObjectNotFoundError(f"{where} does not exist: {source.version_id!r} is not a valid version id") from exc
    if code == "MethodNotAllowed" or status == 405:
        raise ObjectNotFoundError(f"{where} does not exist: that version is a delete marker") from exc
    if code == "InvalidObjectState":
        raise InvalidRequestError(
            f"{where} is archived (Glacier / Deep Archive) and must be restored before it can be read"
        ) from exc
    if code in ("AccessDenied", "Forbidden", "403") or status == 403:
        # Without s3:ListBucket, S3 answers 403 for a missing key too, so say both.
        raise ObjectNotFoundError(
            f"{where} cannot be read by the pipeline ({action}: 403 {code}): the bucket is not one its role may "
            "read, the object is encrypted with a KMS key it may not use, or the object does not exist"
        ) from exc
    if code in _WRONG_REGION_CODES or status == 301:
        raise InvalidRequestError(
            f"{where}: bucket {source.bucket!r} is in another region than the pipeline ({code})"
        ) from exc
    raise_transient(exc, f"{action} {where}")


@dataclass(frozen=True)
class Fetched:
    """An object as one GET read it."""

    source: SourceObject  # pinned to what was read: its version, ETag and size
    metadata: dict[str, str]  # user metadata, names lower-cased as S3 returns them
    data: bytes


def fetch_object(
    s3: Any, source: SourceObject, limits: ImageLimits, reserve: Callable[[int], None] | None = None
) -> Fetched:
    """One GetObject: the object's bytes, pinned version, ETag, size and user metadata.

    The size limit is checked from the response's Content-Length before any of the body is read,
    so nothing over ``limits.max_object_bytes`` is downloaded. A source naming a version reads
    exactly that version; without one (an unversioned bucket, a manual input) the latest, and the
    result names what was read, so it is never a mix of two objects. ``reserve(size)`` is called
    between the headers and the body (a caller bounding how many bytes it buffers blocks there).

    Example::

        fetched = fetch_object(s3, SourceObject("in-bucket", "cat.jpg"), ImageLimits())
        fetched.source.version_id, fetched.metadata, len(fetched.data)   # '3HL4kqtJ…', {'inferpipe-top-k': '3'}, 183211
    """
    params: dict[str, str] = {"Bucket": source.bucket, "Key": source.key}
    if source.version_id:
        params["VersionId"] = source.version_id
    try:
        response = s3.get_object(**params)
    except ClientError as exc:
        _raise_s3_error(exc, source, "GetObject")
    except BotoCoreError as exc:
        raise_transient(exc, f"GetObject {_where(source)}")
    body = response["Body"]
    try:
        size = int(response.get("ContentLength", 0))
        if size > limits.max_object_bytes:
            raise ObjectTooLargeError(
                f"{_where(source)} is {size} bytes, more than the limit of {limits.max_object_bytes} bytes (MAX_OBJECT_BYTES)"
            )
        if reserve is not None:
            reserve(size)
        try:
            data: bytes = body.read(limits.max_object_bytes + 1)
        except BotoCoreError as exc:
            raise_transient(exc, f"GetObject {_where(source)}")
    finally:
        body.close()
    if len(data) > limits.max_object_bytes:
        raise ObjectTooLargeError(
            f"{_where(source)} is more than the limit of {limits.max_object_bytes} bytes (MAX_OBJECT_BYTES)"
        )
    if len(data) != size:
        raise TransientError(f"GetObject {_where(source)}: read {len(data)} of {size} bytes")
    etag = str(response.get("ETag") or "").strip('"') or None  # unquoted, as S3 events carry it
    metadata = {str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()}
    modified = response.get("LastModified")
    when = (
        modified.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if isinstance(modified, datetime)
        else None
    )
    return Fetched(source.located(response.get("VersionId"), etag, size, when), metadata, data)


# --------------------------------------------------------------------------- decode


def _sniff(data: bytes) -> str:
    """A hint about what non-image bytes are, without echoing them."""
    head = data[:64].lstrip()
    if head[:1] in (b"<", b"{", b"["):
        return " (it starts like text: HTML, XML or JSON, e.g. an error page saved under an image name)"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return " (it looks like text)"
    return ""


def _check_pixels(size: tuple[int, int], limits: ImageLimits, name: str) -> None:
    width, height = size
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise DecompressionBombError(
            f"{name} is {width}x{height} = {pixels} pixels, more than the limit of "
            f"{limits.max_image_pixels} pixels ({limits.pixel_limit_source}); it was not decoded"
        )


def _bomb(name: str, limits: ImageLimits, exc: BaseException) -> DecompressionBombError:
    return DecompressionBombError(
        f"{name} has more pixels than Pillow's decompression-bomb limit ({exc}); the pipeline's limit "
        f"({limits.pixel_limit_source}) is {limits.max_image_pixels}; it was not decoded"
    )


@contextlib.contextmanager
def _untrusted(name: str, limits: ImageLimits, corrupt: str) -> Iterator[None]:
    """Run Pillow on untrusted bytes: a decompression bomb becomes DecompressionBombError, any other
    failure (but our own NotAnImageError and MemoryError) ``NotAnImageError("<corrupt>: <reason>")``.

    Pillow warns (1x-2x its global MAX_IMAGE_PIXELS) or raises (above 2x): both are refusals here.
    The filter is local to the block; the global Pillow limit is never changed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(name, limits, exc) from None
        except (MemoryError, NotAnImageError):
            raise
        except Exception as exc:  # noqa: BLE001 - any parser or decoder failure on untrusted bytes
            raise NotAnImageError(f"{corrupt}: {exc}") from None


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, if any; unreadable EXIF leaves the image as stored."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            transposed = ImageOps.exif_transpose(image)
            if transposed is not None:
                return transposed
    except Exception:  # noqa: BLE001 - malformed EXIF must not reject an image that decodes
        return image
    return image


#: Rows converted at a time by _wide_grey_to_l: float64 work arrays stay a few MB whatever the size.
_STRIP_ROWS = 256


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale scaled (not clipped) to 8 bits.

    ``I;16*`` uses the full 16-bit range (v / 257). ``I`` is treated as 16-bit when its values
    fit 0..65535 (what 16-bit TIFF/PNM give), otherwise stretched min..max. ``F`` is treated as
    0..1 when its values fit, otherwise stretched min..max. NaN becomes black.

    Strip by strip: converting a whole 6000×6600 16-bit PNG at once made four float64 copies of
    it and drove preprocess to 1.34 GB peak RSS (measured), past its 1024 MB function.
    """
    pixels = np.asarray(image)  # one copy, in the stored dtype (2 bytes a pixel for I;16)

    def strips(values: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        for top in range(0, values.shape[0], _STRIP_ROWS):
            rows = slice(top, top + _STRIP_ROWS)
            yield rows, np.nan_to_num(values[rows].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)

    if pixels.size == 0:
        low = high = 0.0
    elif pixels.dtype.kind == "f":
        bounds = [(float(strip.min()), float(strip.max())) for _, strip in strips(pixels)]
        low, high = min(b[0] for b in bounds), max(b[1] for b in bounds)
    else:
        low, high = float(pixels.min()), float(pixels.max())
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        scale, offset = 1.0 / 257.0, 0.0
    elif image.mode == "F" and low >= 0 and high <= 1.0:
        scale, offset = 255.0, 0.0
    elif high > low:
        scale, offset = 255.0 / (high - low), low
    else:
        scale, offset = 1.0, 0.0  # a flat image: its values, clipped to 0..255
    out = np.empty(pixels.shape, dtype=np.uint8)
    for rows, strip in strips(pixels):
        if offset:
            np.subtract(strip, offset, out=strip)
        np.multiply(strip, scale, out=strip)
        out[rows] = np.clip(np.rint(strip), 0, 255)
    del pixels
    return Image.fromarray(out, "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency is composited onto white, wide greys are scaled.

    Example::

        to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0))   # (255, 0, 0)
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(image).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        # Strip by strip (alpha compositing is per pixel, so the result is the same): a whole
        # 6000×6600 RGBA image composited at once held four full-size copies, 0.81 GB (measured).
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        out = Image.new("RGB", rgba.size)
        width, height = rgba.size
        for top in range(0, height, _STRIP_ROWS):
            strip = rgba.crop((0, top, width, min(top + _STRIP_ROWS, height)))
            out.paste(Image.alpha_composite(Image.new("RGBA", strip.size, _WHITE), strip).convert("RGB"), (0, top))
        return out
    return image.convert("RGB")


def _draft_size(target: InputSpec) -> tuple[int, int]:
    # JPEG DCT scaling picks the largest factor 1/2/4/8 keeping both sides >= the requested box,
    # so a square box of resize_shorter keeps the shorter side >= resize_shorter whatever the
    # orientation; fit() still does the final, antialiased resize.
    return (target.resize_shorter, target.resize_shorter)


def decode_image(
    data: bytes, limits: ImageLimits, target: InputSpec | None = None, *, name: str = "the object"
) -> Image.Image:
    """Decode untrusted bytes into an upright 8-bit RGB image (the first frame if animated).

    The pixel count is checked from the header before any pixel is decoded; the whole image is
    then decoded (``load()``) so truncation is detected here. With ``target``, JPEGs decode at a
    reduced DCT scale that keeps the shorter side >= ``target.resize_shorter``.

    Example::

        image = decode_image(data, ImageLimits(), target=manifest.input, name="s3://in/cat.jpg")
    """
    if not data:
        raise NotAnImageError(f"{name} is empty (0 bytes)")
    with _untrusted(name, limits, f"{name} has a corrupt image header"):
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise NotAnImageError(
                f"{name} ({len(data)} bytes) is not a {', '.join(ACCEPTED_FORMATS)} image{_sniff(data)}"
            ) from None
    _check_pixels(image.size, limits, name)
    with _untrusted(name, limits, f"{name} is truncated or corrupt ({image.format})"):
        if target is not None and image.format in _JPEG_FORMATS:
            image.draft("RGB", _draft_size(target))
        image.load()  # the full decode: truncated data fails here
    _check_pixels(image.size, limits, name)
    image = _orient(image)
    try:
        return to_rgb(image)
    except ValueError as exc:
        raise NotAnImageError(
            f"{name} uses colour mode {image.mode}, which cannot be converted to RGB: {exc}"
        ) from None


def preprocess(data: bytes, limits: ImageLimits, spec: InputSpec, *, name: str = "the object") -> np.ndarray:
    """Bytes to the network input: decode, resize, crop, normalise; shape (1, 3, H, W) float32.

    Example::

        tensor = preprocess(data, ImageLimits(), manifest.input)   # (1, 3, 224, 224)
    """
    image = decode_image(data, limits, target=spec, name=name)
    return to_tensor(image, spec)[np.newaxis]


# --------------------------------------------------------------------------- store


def tensor_key(prefix: str, source: SourceObject, model: ModelRef) -> str:
    """The work-bucket key of one (object version, model version) tensor: the same on every retry.

    The ETag is part of the hash so that, in an unversioned bucket, an object overwritten with
    new content gets a new tensor instead of racing with an execution for the old content.
    """
    parts = [source.bucket, source.key, source.version_id or "", source.etag or "", model.name, model.version]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"{prefix}{digest}.npy"


def put_npy(s3: Any, bucket: str, key: str, array: np.ndarray, model: ModelRef) -> None:
    """Write ``array`` as ``.npy`` to ``s3://bucket/key``, tagged with the model it was made for.

    A throttle or a network error is raised transient (the task retries); anything else as it is.
    """
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=buffer.getvalue(),
            ContentType="application/octet-stream",
            Metadata={"model": model.name, "model-version": model.version},
        )
    except (ClientError, BotoCoreError) as exc:
        raise_transient(exc, f"PutObject s3://{bucket}/{key}")


def store_tensor(
    s3: Any, bucket: str, prefix: str, source: SourceObject, model: ModelRef, array: np.ndarray
) -> dict[str, Any]:
    """Write ``array`` as ``.npy`` under a deterministic key; return the tensor reference.

    Example::

        store_tensor(s3, "work", "tensors/", source, ModelRef("demo", "3f9a1c0b7d2e"), tensor)
        # {"bucket": "work", "key": "tensors/5e1c….npy", "shape": [1, 3, 64, 64], "dtype": "float32"}
    """
    if array.dtype != np.float32 or array.ndim != 4 or array.shape[:2] != (1, 3):
        raise ValueError(f"store_tensor expects a (1, 3, H, W) float32 array, got {array.shape} {array.dtype}")
    key = tensor_key(prefix, source, model)
    put_npy(s3, bucket, key, array, model)
    ref = TensorRef(bucket=bucket, key=key, shape=tuple(int(d) for d in array.shape))  # type: ignore[arg-type]
    return ref.to_dict()


__all__ = [
    "ACCEPTED_FORMATS",
    "Fetched",
    "decode_image",
    "fetch_object",
    "preprocess",
    "put_npy",
    "store_tensor",
    "tensor_key",
    "to_rgb",
]
