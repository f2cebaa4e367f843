"""Cold model-load time and warm inference time, for the demo model and a random-weight ResNet-50 v1.

Cold = what a fresh inference function pays for a version it has never loaded: resolve the
manifest + fetch and verify the files from the model bucket (moto's S3, in process), load the
params and build the graph (``load_model``, which includes one warm-up forward), then the first
real forward. Warm = median of further batch-1 forwards on the loaded model.

Usage::

    .venv/bin/python scripts/model_timings.py [--repeats 30] [--skip-resnet50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.common.model_store import ModelStore
from functions.inference.core import load_model, predict
from inferpipe.models import publish
from inferpipe.packaging import import_model_zoo
from inferpipe.paths import BUILD_DIR

BUCKET = "timings-models"


def measure(s3: object, package: Path, name: str, repeats: int) -> dict[str, float | str | bool]:
    manifest = publish(s3, BUCKET, package, name=name)
    store = ModelStore(BUCKET, s3)  # a fresh store: nothing cached
    rng = np.random.default_rng(0)
    shape = (1, 3, manifest.input.height, manifest.input.width)
    tensor = rng.standard_normal(shape).astype(np.float32)

    t0 = time.perf_counter()
    resolved = store.resolve(name, manifest.version)
    files = store.fetch_files(resolved)
    t1 = time.perf_counter()
    model = load_model(resolved, files)
    t2 = time.perf_counter()
    predict(model, tensor, top_k=1)
    t3 = time.perf_counter()
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(model, tensor, top_k=1)
        warm.append((time.perf_counter() - start) * 1000.0)
    return {
        "params_mb": len(files["params"]) / 2**20,
        "inference_mode": manifest.inference_mode,
        "fused": model.fused,
        "fetch_ms": (t1 - t0) * 1000.0,
        "load_ms": (t2 - t1) * 1000.0,
        "first_forward_ms": (t3 - t2) * 1000.0,
        "cold_total_ms": (t3 - t0) * 1000.0,
        "warm_median_ms": statistics.median(warm),
        "warm_p90_ms": sorted(warm)[int(0.9 * (len(warm) - 1))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args(argv)

    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    import boto3
    from moto import mock_aws

    demo_dir = BUILD_DIR / "demo-model"
    if not (demo_dir / "manifest.json").exists():
        print(f"no demo model at {demo_dir}: run `inferpipe model build-demo` first", file=sys.stderr)
        return 1
    results = {}
    with mock_aws(), tempfile.TemporaryDirectory() as tmp:
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        results["demo"] = measure(s3, demo_dir, "demo", args.repeats)
        if not args.skip_resnet50:
            started = time.perf_counter()
            import_model_zoo("resnet50_v1", pretrained=False, out_dir=Path(tmp) / "resnet50", package_name="resnet50")
            print(
                f"(resnet50_v1 random-weight package built in {time.perf_counter() - started:.1f} s)", file=sys.stderr
            )
            results["resnet50_v1"] = measure(s3, Path(tmp) / "resnet50", "resnet50", args.repeats)
    print(
        f"{'MODEL':<12}{'MODE':<6}{'FUSED':<7}{'PARAMS':>9}{'FETCH':>9}{'LOAD':>9}{'1ST FWD':>9}{'COLD':>9}{'WARM p50':>10}{'WARM p90':>10}"
    )
    for model, r in results.items():
        print(
            f"{model:<12}{r['inference_mode']:<6}{r['fused']!s:<7}{r['params_mb']:>7.1f}MB{r['fetch_ms']:>7.0f}ms{r['load_ms']:>7.0f}ms"
            f"{r['first_forward_ms']:>7.1f}ms{r['cold_total_ms']:>7.0f}ms{r['warm_median_ms']:>8.1f}ms{r['warm_p90_ms']:>8.1f}ms"
        )
    print(
        f"(cpu count {os.cpu_count()}; cold = fetch + load incl. warm-up forward + first forward; warm over {args.repeats} forwards)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
