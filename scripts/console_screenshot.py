"""Screenshots of the local console for README (``make screenshot``): headless Chromium over a
local stack that has just run one good upload and one whose SQS sink refused its batch.

Writes docs/console-executions.png and docs/console-execution.png. Needs chromium-headless-shell.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inferpipe.local.stack import LocalStack  # noqa: E402 (after the path)
from inferpipe.models import publish  # noqa: E402
from tests.e2e.conftest import DEMO_MODEL_DIR, image_bytes, run_upload  # noqa: E402


def shoot(browser: str, url: str, out: Path, height: int) -> None:
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--user-data-dir=/tmp/inferpipe-chromium",
            f"--window-size=1280,{height}",
            "--virtual-time-budget=8000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {out.relative_to(REPO)}")


def main() -> int:
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        print("no headless Chromium: apt-get install chromium-headless-shell", file=sys.stderr)
        return 2
    stack = LocalStack(default_model="demo", trigger="direct").start()
    try:
        publish(stack.client("s3"), stack.resources.buckets["models"], DEMO_MODEL_DIR, name="demo", alias="prod")
        finals = [
            run_upload(stack, f"incoming/{uuid.uuid4().hex[:4]} {name}", image_bytes(label, seed=3), sqs_down=down)
            for name, label, down in (("holiday photo.jpg", "circle", False), ("cat.jpg", "square", True))
        ]
        docs = REPO / "docs"
        shoot(browser, f"{stack.endpoint_url}/console#executions", docs / "console-executions.png", 420)
        shoot(
            browser,
            f"{stack.endpoint_url}/console#execution?id={finals[1]['name']}",
            docs / "console-execution.png",
            1250,
        )
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
