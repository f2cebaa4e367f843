"""How much a crash of the local stack loses: writes objects steadily, kills the daemon (SIGKILL) at
a random moment, starts it again and finds the newest write that came back.

    .venv/bin/python scripts/crash_window.py [--rounds 5]

Prints, per round, the seconds between the last write the stack answered and the newest one it
restored (the data loss window), then the median and the worst.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inferpipe.local import daemon  # noqa: E402 (after the path)
from inferpipe.target import Target  # noqa: E402


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_round(state_dir: Path, port: int, rng: random.Random) -> float:
    started = daemon.up(port=port, state_dir=state_dir, trigger="direct", timeout=120)
    target = Target.connect(endpoint_url=started["endpoint_url"])
    s3, bucket = target.client("s3"), target.resources.buckets["work"]
    answered: dict[str, float] = {}
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            key = f"crash-window/{time.time():.3f}-{n}"
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=b"x")
            except Exception:  # noqa: BLE001 (the stack is being killed)
                return
            answered[key] = time.time()
            n += 1
            time.sleep(0.05)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(rng.uniform(4.0, 12.0))
    os.kill(started["pid"], signal.SIGKILL)
    killed = time.time()
    stop.set()
    thread.join(timeout=10)
    last_answered = max(t for t in answered.values() if t <= killed)
    daemon.up(port=port, state_dir=state_dir, trigger="direct", timeout=120)
    kept = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="crash-window/")
        for o in page.get("Contents", [])
    }
    newest_kept = max((answered[k] for k in kept if k in answered), default=0.0)
    daemon.down(state_dir)
    return last_answered - newest_kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    windows = []
    with tempfile.TemporaryDirectory(prefix="inferpipe-crash-") as folder:
        port = _port()
        for n in range(args.rounds):
            window = one_round(Path(folder), port, rng)
            windows.append(window)
            print(f"round {n + 1}: lost the last {window:.2f} s of writes", flush=True)
    print(
        f"data loss window: median {statistics.median(windows):.2f} s, worst {max(windows):.2f} s over {len(windows)} crashes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
