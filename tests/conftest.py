"""Shared test set-up: dummy AWS credentials so nothing can reach a real account."""

from __future__ import annotations

import os

# Set before any boto3 client exists: tests only ever talk to moto.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_SESSION_TOKEN", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


from pathlib import Path  # noqa: E402  (after the environment above, on purpose)

import pytest  # noqa: E402

from functions.common.manifest import Manifest  # noqa: E402


@pytest.fixture(scope="session")
def lite0_package() -> tuple[Path, Manifest]:
    """The default model's package (pretrained EfficientNet-Lite0, the mode its import chose),
    built once into build/models/efficientnet_lite0 (about 30 s) and reused while it exists,
    exactly as `make demo` builds it."""
    from inferpipe.demo import MODEL_DIR, default_model_package

    return MODEL_DIR, default_model_package(MODEL_DIR)
