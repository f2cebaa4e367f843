"""The deployment's real default: a photo uploaded with no options is classified by the pretrained
ImageNet model, and every sink holds the label a direct MXNet forward of the same package gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.common.manifest import Manifest
from inferpipe.classify import classify_files
from inferpipe.demo import MODEL_NAME
from inferpipe.pretrained.photos import demo_photos, write_jpegs
from tests.e2e.conftest import SinkReader, direct_top1


@pytest.fixture(scope="module")
def real_stack(lite0_package: tuple[Path, Manifest]) -> Iterator[Any]:
    """GIVEN the local stack with the deployment's own defaults and the default model published as prod."""
    from inferpipe.local.stack import LocalStack
    from inferpipe.models import publish

    folder, _ = lite0_package
    local: Any = LocalStack()  # Any: the tests read an attribute this fixture adds (published)
    local.start()
    try:
        assert local.resources.defaults.model == MODEL_NAME  # config/stack.json's default, untouched
        local.published = publish(
            local.client("s3"), local.resources.buckets["models"], folder, name=MODEL_NAME, alias="prod"
        )
        yield local
    finally:
        local.stop()


def test_real_photos_uploaded_without_options_reach_every_sink_with_the_direct_forward_label(
    real_stack: Any, lite0_package: tuple[Path, Manifest], tmp_path: Path
) -> None:
    folder, manifest = lite0_package
    photos = demo_photos()
    paths = write_jpegs({name: photos[name] for name in ("chelsea", "coffee")}, tmp_path)
    # WHEN a user classifies two photos with no model option (S3 -> EventBridge -> Step Functions)
    results = classify_files(real_stack, paths)
    sinks = SinkReader(real_stack)
    for path, result in zip(paths, results, strict=True):
        # THEN each succeeds with an ImageNet label a person would accept, from the default model
        assert result.status == "succeeded", result.error
        expected = direct_top1(folder, path.read_bytes())
        assert result.top_k[0]["label"] == expected
        assert expected in photos[path.stem].expected
        assert result.model_version == real_stack.published.version
        assert len(result.top_k) == 5 and result.top_k[0]["probability"] > 0.3
        # AND every sink holds one record with that label and the exact model version
        assert result.key is not None
        records = sinks.records(real_stack.resources.buckets["input"], result.key)
        assert set(records) == {"s3", "dynamodb", "sns", "sqs", "eventbridge"}
        for sink, found in records.items():
            assert len(found) == 1, (sink, found)
            record = found[0]
            if sink == "dynamodb":
                assert record["label"]["S"] == expected and record["model"]["S"] == MODEL_NAME
                assert record["model_version"]["S"] == manifest.version
            else:
                assert record["top1"]["label"] == expected, sink
                assert record["model"]["name"] == MODEL_NAME and record["model"]["version"] == manifest.version
