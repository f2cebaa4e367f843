"""``make demo``: package the pretrained ImageNet model if missing, start the local stack, classify
real photos, and show where each sink put its record."""

from __future__ import annotations

import json
import time
from pathlib import Path

from functions.common.manifest import MANIFEST_FILE, Manifest
from functions.sink.core import output_key
from inferpipe.classify import FileResult, classify_files, format_results
from inferpipe.paths import BUILD_DIR, STATE_DIR
from inferpipe.target import Target

#: The default model of the deployment (config/stack.json), the pretrained EfficientNet-Lite0.
MODEL_NAME = "efficientnet_lite0"
MODEL_DIR = BUILD_DIR / "models" / MODEL_NAME
SAMPLES_DIR = BUILD_DIR / "demo-images"
#: A file the pipeline must refuse: the demo shows the failure path too.
BAD_SAMPLE = "not an image.png"


def default_model_package(out_dir: Path = MODEL_DIR) -> Manifest:
    """The package of the default model, built once (about 30 s on 2 cores) and reused while it exists."""
    manifest_path = out_dir / MANIFEST_FILE
    if manifest_path.exists():
        return Manifest.from_json(manifest_path.read_text())
    from inferpipe.pretrained import import_pretrained

    print(f"packaging the pretrained {MODEL_NAME} (once, about 30 s: fp32, fused and int8 compared on real photos)…")
    return import_pretrained(MODEL_NAME, out_dir)


def _samples() -> tuple[list[Path], dict[str, tuple[str, ...]]]:
    from inferpipe.pretrained.photos import demo_photos, write_jpegs

    photos = demo_photos()
    paths = write_jpegs(photos, SAMPLES_DIR)
    bad = SAMPLES_DIR / BAD_SAMPLE
    bad.write_bytes(b"<!doctype html><title>this is a web page, not a picture</title>")
    return [*paths, bad], {f"{name}.jpg": photo.expected for name, photo in photos.items()}


def run_demo(endpoint_url: str | None = None, port: int | None = None) -> int:
    from inferpipe.models import publish

    manifest = default_model_package()
    selection = manifest.metrics.get("mode_selection", {})
    print(
        f"model: {MODEL_DIR} ({manifest.architecture}, {manifest.inference_mode}; "
        f"top-1 agreement with fp32 {manifest.metrics.get('agreement_top1_vs_fp32', 1.0):.1%} on "
        f"{selection.get('heldout_images', '?')} held-out photo views)"
    )
    target = Target.connect(endpoint_url=endpoint_url, port=port, state_dir=STATE_DIR)
    print(f"local stack: {target.endpoint_url}")
    published = publish(
        target.client("s3"), target.resources.buckets["models"], MODEL_DIR, name=MODEL_NAME, alias="prod"
    )
    print(f"model {MODEL_NAME} version {published.version} published, alias prod (the deployment default)")

    paths, expected = _samples()
    print(f"\nclassifying {len(paths)} files from {SAMPLES_DIR} through S3 → EventBridge → Step Functions…\n")
    started = time.monotonic()
    results = classify_files(target, paths)
    elapsed = time.monotonic() - started
    print(format_results(results))
    good = [r for r in results if Path(r.file).name != BAD_SAMPLE]
    print("\ntop-5 of each photo:")
    correct = 0
    for result in good:
        accepted = expected.get(Path(result.file).name, ())
        right = bool(result.top_k) and result.top_k[0]["label"] in accepted
        correct += right
        shown = ", ".join(f"{c['label']} {c['probability']:.2f}" for c in result.top_k)
        print(f"  {'✓' if right else '✗'} {Path(result.file).name:<12} {shown}   (correct: {' / '.join(accepted)})")
    print(f"\n{correct}/{len(good)} photos classified correctly; {elapsed:.1f} s for {len(results)} files")
    _show_sinks(target, results)
    print("\nclassify your own photo: .venv/bin/inferpipe classify path/to/photo.jpg")
    print(f"the local console (these executions, their graphs, Redrive): {target.endpoint_url}/console")

    bad = next(r for r in results if Path(r.file).name == BAD_SAMPLE)
    expected_failure = bad.status == "failed" and bad.error is not None and bad.error["type"] == "NotAnImageError"
    if not expected_failure:
        print(f"unexpected: {BAD_SAMPLE} should fail with NotAnImageError, got {bad.status} {bad.error}")
    return 0 if correct == len(good) and expected_failure else 1


def _show_sinks(target: Target, results: list[FileResult]) -> None:
    print("\nwhere the records went (one per sink per image):")
    per_sink: dict[str, list[str]] = {}
    for result in results:
        for delivery in result.deliveries:
            per_sink.setdefault(delivery["sink"], []).append(delivery["location"])
    for sink, locations in sorted(per_sink.items()):
        print(f"  {sink:<12} {len(locations):>3} records   e.g. {locations[0]}")
    first = next((r for r in results if r.status == "succeeded"), None)
    if first is None:
        return
    res = target.resources
    body = (
        target.client("s3")
        .get_object(
            Bucket=res.buckets["output"],
            Key=output_key(res.settings["OUTPUT_PREFIX"], {"bucket": res.buckets["input"], "key": first.key}),
        )["Body"]
        .read()
    )
    record = json.loads(body)
    print(f"\nthe S3 record of {first.file}:")
    print(
        json.dumps(
            {k: record[k] for k in ("record_id", "source", "model", "top1", "execution_id")},
            indent=2,
            ensure_ascii=False,
        )
    )
    items = target.client("dynamodb").scan(TableName=res.table, Select="COUNT")["Count"]
    print(
        f"\nDynamoDB table {res.table}: {items} items. Read the rest with e.g.\n"
        f"  aws --endpoint-url {target.endpoint_url} sqs receive-message --queue-url "
        f"{target.client('sqs').get_queue_url(QueueName=res.queue)['QueueUrl']}"
    )
