"""Preprocess stays well inside its function's memory on hostile images under the pixel limit.

Each image is made and preprocessed in a fresh process, whose peak RSS (VmHWM) is the figure
Lambda would kill the function on. Before the strip-wise conversions (measured, 6000×6600):
16-bit greyscale PNG 1337 MB, RGBA PNG 808 MB, for a 1024 MB function; now about 320 and 370 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from functions.common.config import (
    DECODE_BASELINE_MB,
    DECODE_BYTES_PER_PIXEL,
    LAMBDA_MEMORY_SIZE,
    Settings,
    pixels_for_memory,
)
from inferpipe.stack.resources import render_resources

ROOT = Path(__file__).resolve().parents[2]
SIZE = (6000, 6600)  # 39.6 MP, under MAX_IMAGE_PIXELS (40 MP)

MAKE = """
import sys, numpy as np
from PIL import Image
w, h = {w}, {h}
kind, path = sys.argv[1], sys.argv[2]
if kind == "grey16":
    row = (np.arange(w, dtype=np.uint32) * 10 % 65536).astype(np.uint16)
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (h, w)))).save(path)
elif kind == "rgba":
    Image.new("RGBA", (w, h), (10, 200, 30, 128)).save(path)
elif kind == "palette":
    Image.new("P", (w, h), 3).save(path)
elif kind == "cmyk":
    Image.new("CMYK", (w, h), (10, 200, 30, 40)).save(path, format="JPEG", quality=50)
elif kind == "animated":
    frames = [Image.new("P", (w, h), n) for n in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])
"""

MEASURE = """
import json, sys
from functions.common.config import ImageLimits
from functions.common.manifest import InputSpec
from functions.preprocess.core import preprocess
data = open(sys.argv[1], "rb").read()
tensor = preprocess(data, ImageLimits(), InputSpec(224, 224, 256, "bicubic", (0.5,) * 3, (0.5,) * 3), name="hostile")
# VmHWM, this process's own peak: ru_maxrss would also count the parent's RSS at fork (Linux keeps
# it across exec), which made every image read as the test runner's 1.5 GB.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mb": peak_kb / 1024, "shape": list(tensor.shape)}))
"""


@pytest.mark.parametrize("kind", ["grey16", "rgba", "palette", "cmyk", "animated"])
def test_a_39_megapixel_image_preprocesses_within_half_the_function_memory(tmp_path: Path, kind: str) -> None:
    # GIVEN a hostile image just under the pixel limit (a small file that decodes to a huge one)
    path = tmp_path / f"{kind}.png"
    subprocess.run(
        [sys.executable, "-c", MAKE.format(w=SIZE[0], h=SIZE[1]), kind, str(path)], check=True, cwd=ROOT, timeout=120
    )
    assert path.stat().st_size < 2_000_000
    # WHEN preprocess runs it in a fresh process
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # THEN it succeeds with a tensor, its peak well inside the function's configured memory
    memory_mb = render_resources().functions["preprocess"].memory_mb
    assert result["shape"] == [1, 3, 224, 224]
    assert result["peak_mb"] < memory_mb / 2, f"{kind}: peak {result['peak_mb']:.0f} MB of {memory_mb} MB"
    # AND within what the memory-derived pixel limit assumes of a decoded pixel
    pixels = SIZE[0] * SIZE[1]
    assert result["peak_mb"] <= DECODE_BASELINE_MB + pixels * DECODE_BYTES_PER_PIXEL / 2**20, kind


def test_the_pixel_limit_follows_the_function_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN Lambda's MemorySize variable: the configured 40 MP holds at 1024 MB, a smaller function decodes less
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "40000000")
    monkeypatch.setenv(LAMBDA_MEMORY_SIZE, "1024")
    assert Settings.from_env().image_limits.max_image_pixels == 40_000_000
    assert Settings.from_env().image_limits.pixel_limit_source == "MAX_IMAGE_PIXELS"
    monkeypatch.setenv(LAMBDA_MEMORY_SIZE, "512")
    limits = Settings.from_env().image_limits
    assert limits.max_image_pixels == pixels_for_memory(512) < 40_000_000
    assert limits.pixel_limit_source == "the most a 512 MB function decodes safely"
    # AND a 39.6 MP image is refused with an error saying which limit, before any decoding
    from functions.common.errors import DecompressionBombError
    from functions.preprocess.core import _check_pixels

    with pytest.raises(
        DecompressionBombError, match=r"more than the limit of 26843545 pixels \(the most a 512 MB function"
    ):
        _check_pixels(SIZE, limits, "s3://in/huge.png")
