"""``make demo``: build the demo model if missing, start the local stack, classify sample images,
and show where each sink put its record."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from functions.common.manifest import MANIFEST_FILE, Manifest
from inferpipe.classify import FileResult, classify_files
from inferpipe.paths import BUILD_DIR, STATE_DIR
from inferpipe.target import Target

MODEL_DIR = BUILD_DIR / "demo-model"
SAMPLES_DIR = BUILD_DIR / "demo-images"
#: A file the pipeline must refuse: the demo shows the failure path too.
BAD_SAMPLE = "not an image.png"


def _demo_model() -> Manifest:
    manifest_path = MODEL_DIR / MANIFEST_FILE
    if manifest_path.exists():
        manifest = Manifest.from_json(manifest_path.read_text())
        print(f"demo model: {MODEL_DIR} (held-out top-1 {manifest.metrics.get('top1_heldout', '?')})")
        return manifest
    from inferpipe.demo_model.train import build_demo_model

    print("building the demo model (once, about a minute on 2 cores)…")
    return build_demo_model(MODEL_DIR, seed=0)


def _samples() -> list[Path]:
    from inferpipe.demo_model.shapes import sample_images

    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    paths = sorted(sample_images(SAMPLES_DIR, n_per_class=1, seed=2026))
    bad = SAMPLES_DIR / BAD_SAMPLE
    bad.write_bytes(b"<!doctype html><title>this is a web page, not a picture</title>")
    return [*paths, bad]


def run_demo(endpoint_url: str | None = None, port: int | None = None) -> int:
    from inferpipe.cli import print_table
    from inferpipe.models import publish

    _demo_model()
    target = Target.connect(endpoint_url=endpoint_url, port=port, state_dir=STATE_DIR)
    print(f"local stack: {target.endpoint_url}")
    published = publish(target.client("s3"), target.resources.buckets["models"], MODEL_DIR, name="demo", alias="prod")
    print(f"model demo version {published.version} published, alias prod")

    paths = _samples()
    print(f"\nclassifying {len(paths)} files from {SAMPLES_DIR} through S3 → EventBridge → Step Functions…\n")
    started = time.monotonic()
    results = classify_files(target, paths)
    elapsed = time.monotonic() - started
    print_table(results)
    good = [r for r in results if Path(r.file).name != BAD_SAMPLE]
    correct = sum(1 for r in good if r.top_k and Path(r.file).stem.rsplit("-", 1)[0] == r.top_k[0]["label"])
    print(f"\n{correct}/{len(good)} sample images classified correctly; {elapsed:.1f} s for {len(results)} files")
    _show_sinks(target, results)

    bad = next(r for r in results if Path(r.file).name == BAD_SAMPLE)
    expected_failure = bad.status == "failed" and bad.error is not None and bad.error["type"] == "NotAnImageError"
    if not expected_failure:
        print(f"unexpected: {BAD_SAMPLE} should fail with NotAnImageError, got {bad.status} {bad.error}")
    return 0 if all(r.status == "succeeded" for r in good) and expected_failure else 1


def _show_sinks(target: Target, results: list[FileResult]) -> None:
    print("\nwhere the records went (one per sink per image):")
    per_sink: dict[str, list[str]] = {}
    for result in results:
        for delivery in result.deliveries:
            per_sink.setdefault(delivery["sink"], []).append(delivery["location"])
    for sink, locations in sorted(per_sink.items()):
        distinct = Counter(locations)
        example = locations[0]
        print(f"  {sink:<12} {len(locations):>3} records   e.g. {example}" + ("" if len(distinct) > 1 else ""))
    first = next((r for r in results if r.status == "succeeded"), None)
    if first is None:
        return
    res = target.resources
    body = target.client("s3").get_object(
        Bucket=res.buckets["output"], Key=f"predictions/{res.buckets['input']}/{first.key}.json"
    )["Body"].read()
    record = json.loads(body)
    print(f"\nthe S3 record of {first.file}:")
    print(json.dumps({k: record[k] for k in ("record_id", "source", "model", "top1", "execution_id")}, indent=2, ensure_ascii=False))
    items = target.client("dynamodb").scan(TableName=res.table, Select="COUNT")["Count"]
    print(f"\nDynamoDB table {res.table}: {items} items. Read the rest with e.g.\n"
          f"  aws --endpoint-url {target.endpoint_url} sqs receive-message --queue-url "
          f"{target.client('sqs').get_queue_url(QueueName=res.queue)['QueueUrl']}")
