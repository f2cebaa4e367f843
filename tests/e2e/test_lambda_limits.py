"""The pipeline under Lambda's limits, as the local stack enforces them: memory and isolation.

Tier: end to end. The functions run in execution environments of their own (awslambdaric worker
processes) whose peak memory is checked against the function's MemorySize.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_failures import _run_upload, failure_record

SIZE = (6000, 6600)  # 39.6 MP: under MAX_IMAGE_PIXELS (40 MP)


@pytest.fixture(scope="module")
def grey16_png() -> bytes:
    """A 16-bit greyscale PNG of 6000x6600 in a few hundred KB: it once drove preprocess to 1.34 GB."""
    row = (np.arange(SIZE[0], dtype=np.uint32) * 10 % 65536).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (SIZE[1], SIZE[0])))).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_hostile_16_bit_png_classifies_within_the_preprocess_memory(stack: Any, grey16_png: bytes) -> None:
    preprocess = stack.resources.functions["preprocess"]
    before = len(stack.invocations("preprocess"))
    # WHEN the image is uploaded
    final = _run_upload(stack, f"limits/{uuid.uuid4().hex[:8]}-grey16.png", grey16_png, timeout=180)
    # THEN it is classified, and preprocess's environment never came near its memory size
    assert final["status"] == "SUCCEEDED", final.get("cause")
    runs = [r for r in stack.invocations("preprocess")[before:] if not r.injected]
    assert runs and all(r.error_type is None for r in runs)
    peak = max(r.max_memory_mb or 0 for r in runs)
    assert 0 < peak < preprocess.memory_mb * 0.75, f"peak {peak} MB of {preprocess.memory_mb} MB"


def test_a_smaller_function_refuses_the_image_by_its_memory_limit_instead_of_dying(
    stack: Any, grey16_png: bytes
) -> None:
    lam = stack.client("lambda")
    preprocess = stack.resources.functions["preprocess"]
    key = f"limits/{uuid.uuid4().hex[:8]}-grey16-small.png"
    # GIVEN preprocess has 256 MB: too little for 39.6 MP
    lam.update_function_configuration(FunctionName=preprocess.name, MemorySize=256)
    try:
        final = _run_upload(stack, key, grey16_png, timeout=180)
    finally:
        lam.update_function_configuration(FunctionName=preprocess.name, MemorySize=preprocess.memory_mb)
    # THEN the execution fails at once with a named error saying which limit, not out of memory
    assert final["status"] == "FAILED"
    assert final["error"] == "DecompressionBombError", final
    record = failure_record(stack, stack.resources.buckets["input"], key)
    assert record is not None and record["error"]["type"] == "DecompressionBombError"
    assert "the most a 256 MB function decodes safely" in record["error"]["message"]
    assert not any(r.error_type == "Runtime.OutOfMemory" for r in stack.invocations("preprocess"))


def test_a_function_that_runs_out_of_memory_is_not_retried_and_leaves_a_failure_record(
    stack: Any, grey16_png: bytes
) -> None:
    lam = stack.client("lambda")
    inference = stack.resources.functions["inference"]
    key = f"limits/{uuid.uuid4().hex[:8]}-oom.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 30)).save(buffer, format="JPEG")
    before = len(stack.invocations("inference"))
    # GIVEN inference has less memory than MXNet and the model need
    lam.update_function_configuration(FunctionName=inference.name, MemorySize=128)
    try:
        final = _run_upload(stack, key, buffer.getvalue(), timeout=180)
    finally:
        lam.update_function_configuration(FunctionName=inference.name, MemorySize=inference.memory_mb)
    # THEN Lambda's out-of-memory error ends the execution after one attempt, with a failure record
    assert final["status"] == "FAILED"
    assert final["error"] == "Runtime.OutOfMemory", final
    runs = [r for r in stack.invocations("inference")[before:] if not r.injected]
    assert [r.error_type for r in runs] == ["Runtime.OutOfMemory"]
    record = failure_record(stack, stack.resources.buckets["input"], key)
    assert record is not None and record["error"]["type"] == "Runtime.OutOfMemory"
    assert json.dumps(record).count("signal: killed") >= 1
