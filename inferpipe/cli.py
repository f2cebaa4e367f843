"""The ``inferpipe`` command: classify files, run the local stack, manage model packages, demo.

Examples::

    inferpipe classify cat.jpg "holiday photo.png" --top-k 3
    inferpipe classify *.jpg --json > results.json
    inferpipe local up | status | down
    inferpipe model publish build/demo-model --name demo --alias prod
    inferpipe demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferpipe.paths import STATE_DIR


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("INFERPIPE_ENDPOINT_URL"),
        help="talk to an already running local stack at this URL (default: the one `inferpipe local up` "
        "started, starting it when needed)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("INFERPIPE_LOCAL_PORT", "4599")),
        help="port of the local stack when it has to be started (default 4599, env INFERPIPE_LOCAL_PORT)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferpipe", description="Event-driven ResNet image classification on AWS.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser("classify", help="upload images and wait for their predictions")
    classify.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    classify.add_argument("--json", action="store_true", help="print only a JSON array, one object per file")
    classify.add_argument("--top-k", type=_positive_int, help="how many classes to return (default: the deployment's)")
    classify.add_argument("--model", help="model name (default: the deployment's)")
    classify.add_argument("--model-version", help="model version or alias (default: the deployment's)")
    classify.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all executions (default 300)")
    _add_target_options(classify)

    local = commands.add_parser("local", help="the embedded local AWS stack (loopback only)")
    local.add_argument("action", choices=["up", "down", "status"])
    local.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("INFERPIPE_LOCAL_PORT", "4599")),
        help="port to serve on (default 4599, env INFERPIPE_LOCAL_PORT)",
    )

    model = commands.add_parser("model", help="model packages in the versioned model bucket")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    publish = model_commands.add_parser("publish", help="validate a package folder and publish it as a new version")
    publish.add_argument("package", type=Path, metavar="DIR")
    publish.add_argument("--name", required=True)
    publish.add_argument("--alias", help="point this alias (e.g. prod) at the published version")
    _add_target_options(publish)
    listing = model_commands.add_parser("list", help="published versions, sizes and aliases")
    listing.add_argument("name", nargs="?")
    _add_target_options(listing)
    promote = model_commands.add_parser("promote", help="move an alias to a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", required=True)
    _add_target_options(promote)
    build = model_commands.add_parser("build-demo", help="train the offline demo model (about a minute)")
    build.add_argument("--out", type=Path, default=Path("build/demo-model"))
    build.add_argument("--seed", type=int, default=0)

    demo = commands.add_parser("demo", help="build the demo model if missing, start the local stack, classify samples")
    _add_target_options(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI never shows a traceback: it says what went wrong
        print(f"inferpipe: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "classify":
        return _classify(args)
    if args.command == "local":
        return _local(args)
    if args.command == "model":
        return _model(args)
    if args.command == "demo":
        from inferpipe.demo import run_demo

        return run_demo(endpoint_url=args.endpoint_url, port=args.port)
    raise AssertionError(args.command)  # argparse guarantees one of the above


def _target(args: argparse.Namespace, quiet: bool = False) -> Any:
    from inferpipe.target import Target

    return Target.connect(endpoint_url=args.endpoint_url, port=args.port, state_dir=STATE_DIR, quiet=quiet)


def _classify(args: argparse.Namespace) -> int:
    from inferpipe.classify import UploadOptions, classify_files

    target = _target(args, quiet=args.json)
    options = UploadOptions(top_k=args.top_k, model=args.model, model_version=args.model_version)
    results = classify_files(target, args.paths, options=options, timeout=args.timeout)
    if args.json:
        print(json.dumps([result.to_json() for result in results], ensure_ascii=False, indent=2))
    else:
        print_table(results)
    return 0 if all(result.status == "succeeded" for result in results) else 1


def print_table(results: Sequence[Any]) -> None:
    """A plain table: file, top-1 label, probability, model version, seconds, status, error."""
    rows = [("FILE", "TOP-1", "PROB", "MODEL VERSION", "SECONDS", "STATUS", "ERROR")]
    for result in results:
        top1 = result.top_k[0] if result.top_k else None
        error = f"{result.error['type']}: {result.error['message']}" if result.error else ""
        rows.append(
            (
                result.file,
                top1["label"] if top1 else "-",
                f"{top1['probability']:.3f}" if top1 else "-",
                result.model_version or "-",
                f"{result.seconds:.2f}" if result.seconds is not None else "-",
                result.status,
                error if len(error) <= 100 else error[:97] + "...",
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _local(args: argparse.Namespace) -> int:
    from inferpipe.local import daemon

    if args.action == "up":
        info = daemon.up(port=args.port, state_dir=STATE_DIR)
        print(f"local stack running at {info['endpoint_url']} (pid {info['pid']})")
        return 0
    if args.action == "down":
        stopped = daemon.down(state_dir=STATE_DIR)
        print("local stack stopped" if stopped else "local stack was not running")
        return 0
    status = daemon.status(state_dir=STATE_DIR)
    print(json.dumps(status, indent=2, default=str))
    return 0 if status.get("running") else 3


def _model(args: argparse.Namespace) -> int:
    from inferpipe import models

    if args.model_command == "build-demo":
        from inferpipe.demo_model.train import build_demo_model

        manifest = build_demo_model(args.out, seed=args.seed)
        print(f"demo model {manifest.name} ({manifest.architecture}) written to {args.out}")
        return 0
    target = _target(args)
    s3 = target.client("s3")
    bucket = target.resources.buckets["models"]
    if args.model_command == "publish":
        manifest = models.publish(s3, bucket, args.package, name=args.name, alias=args.alias)
        alias = f", alias {args.alias} -> {manifest.version}" if args.alias else ""
        print(f"published {manifest.name} version {manifest.version}{alias}")
        return 0
    if args.model_command == "promote":
        models.set_alias(s3, bucket, args.name, args.alias, args.version)
        print(f"{args.name}: alias {args.alias} -> {args.version}")
        return 0
    rows = models.list_versions(s3, bucket, args.name)
    if not rows:
        print("no models published" + (f" under the name {args.name}" if args.name else ""))
        return 0
    print(f"{'NAME':<16}{'VERSION':<16}{'CREATED':<26}{'SIZE':>12}  ALIASES")
    for row in rows:
        print(f"{row['name']:<16}{row['version']:<16}{row['created']:<26}{row['size']:>12}  {', '.join(row['aliases'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
