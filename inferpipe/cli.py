"""The ``inferpipe`` command: classify files, run the local stack, manage model packages, demo.

Examples::

    inferpipe classify cat.jpg "holiday photo.png" --top-k 3
    inferpipe classify *.jpg --json > results.json
    inferpipe local up [--trigger batched|direct] | status | down
    inferpipe local fault add s3:GetObject --count 3 | list | clear
    inferpipe backfill s3://BUCKET/PREFIX [--batch-size N] [--dry-run] [--json]
    inferpipe model publish build/demo-model --name demo --alias prod
    inferpipe replay --since 24h --dry-run
    inferpipe reconcile --since 24h [--prefix photos/] [--json]
    inferpipe logs sink --since 10m --follow
    inferpipe executions list --status FAILED --since 1h | show NAME_OR_ARN [--json]
    inferpipe cost --since 1h
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

# MXNet logs a C++ line each time it builds a oneDNN subgraph: noise in a CLI's output.
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _duration(text: str) -> Any:
    """``--since``: a duration such as 90s, 30m, 24h or 7d (a usage error otherwise)."""
    from inferpipe.replay import parse_duration

    try:
        return parse_duration(text)
    except ValueError as bad:
        raise argparse.ArgumentTypeError(str(bad)) from None


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
    parser.add_argument(
        "--aws",
        action="store_true",
        default=None,
        help="use the stack deployed to AWS (terraform output -json inferpipe) with the usual AWS profile/region "
        "settings (env INFERPIPE_TARGET=aws)",
    )
    parser.add_argument(
        "--terraform-output",
        type=Path,
        metavar="FILE",
        help="the saved output of `terraform output -json inferpipe` (default: run terraform in terraform/); implies --aws",
    )


def _add_import_parser(model_commands: Any) -> None:
    """``model import``: a package from a Gluon model-zoo network or from files a user exported."""
    imp = model_commands.add_parser(
        "import",
        help="build a package from a Gluon model-zoo network or from exported symbol + params + labels",
        description="Either NETWORK: efficientnet_lite0 --pretrained (ImageNet weights that ship offline), or a Gluon "
        "model-zoo name such as resnet50_v1 (random weights unless --pretrained, which downloads); or "
        "--symbol, --params and --labels. The input options default to the ImageNet preprocessing "
        "(efficientnet_lite0 has its own and ignores them).",
    )
    imp.add_argument("zoo_name", nargs="?", metavar="NETWORK", help="efficientnet_lite0, or a Gluon model-zoo network, e.g. resnet50_v1")
    imp.add_argument("--pretrained", action="store_true", help="ImageNet weights: shipped offline for efficientnet_lite0, downloaded (internet) for the zoo")
    imp.add_argument(
        "--optimize", default="auto", choices=["auto", "fp32", "fused", "int8"],
        help="efficientnet_lite0: the mode to write; auto (default) = the fastest whose top-1 agrees with fp32 on >= 95%% of held-out real photos",
    )
    imp.add_argument("--seed", type=int, default=0, help="seed of the random weights without --pretrained (default 0)")
    imp.add_argument("--symbol", type=Path, help="exported MXNet symbol JSON (its input named 'data')")
    imp.add_argument("--params", type=Path, help="exported MXNet params (arg:/aux: names)")
    imp.add_argument("--labels", type=Path, help="class labels, one per line, line i = output i (zoo default: class_0 ...)")
    imp.add_argument("--architecture", help="architecture recorded in the manifest (default: ZOO_NAME or 'custom')")
    imp.add_argument("--inference-mode", default="fp32", choices=["fp32", "fused", "int8"], help="what the exported graph is (default fp32)")
    imp.add_argument("--height", type=_positive_int, default=224, help="input crop height (default 224)")
    imp.add_argument("--width", type=_positive_int, default=224, help="input crop width (default 224)")
    imp.add_argument("--resize-shorter", type=_positive_int, default=256, help="resize the shorter side to this first (default 256)")
    imp.add_argument("--interpolation", default="bilinear", choices=["nearest", "bilinear", "bicubic", "lanczos"])
    imp.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406], metavar=("R", "G", "B"), help="per-channel mean on [0, 1] pixels (default ImageNet)")
    imp.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225], metavar=("R", "G", "B"), help="per-channel std (default ImageNet)")
    imp.add_argument("--name", help="model name (default: ZOO_NAME; required with --symbol)")
    imp.add_argument("--out", type=Path, help="package folder to write (default build/models/NAME)")
    imp.add_argument("--publish", action="store_true", help="also publish the package under --name")
    imp.add_argument("--alias", help="with --publish: point this alias at the published version")
    _add_target_options(imp)


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
    local_commands = local.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = local_commands.add_parser("up", help="start the local stack in the background (or report the running one)")
    up.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to serve on (default 4599, env INFERPIPE_LOCAL_PORT); asking a running stack for another port is an error",
    )
    up.add_argument("--fresh", action="store_true", help="start empty: forget the state kept in the state folder (models, objects, executions, …)")
    up.add_argument(
        "--trigger",
        choices=_trigger_modes(),
        default=None,
        help="how uploads start executions: batched (default: S3 events buffered in SQS, one execution "
        "per batch of up to 100 within about a second) or direct (one execution per upload)",
    )
    local_commands.add_parser("down", help="stop the background local stack")
    local_commands.add_parser("status", help="whether the local stack runs, where, and its resources (exit 3 when it does not)")
    fault = local_commands.add_parser(
        "fault", help="fail (or slow down) AWS requests at the running local stack's edge, to rehearse an outage",
        description="Faults are answered in the service's own wire format before the emulator sees the request, so the "
        "functions' real retries, error classes and the state machine's Retry/Catch all run. They last until `fault clear` "
        "(or their --count is used up) and are lost when the stack stops.",
    )
    fault_commands = fault.add_subparsers(dest="fault_action", required=True, metavar="ACTION")
    add = fault_commands.add_parser("add", help="the next matching requests fail (or are held, with --delay)")
    add.add_argument("target", metavar="SERVICE[:OPERATION]",
                     help="by signing name and API operation, e.g. s3:GetObject, dynamodb:PutItem, sqs:SendMessageBatch, "
                     "sns:PublishBatch, events:PutEvents, states:StartExecution; SERVICE alone: every operation")
    add.add_argument("--error", help="the error code to answer (default: the service's throttle, e.g. SlowDown for s3)")
    add.add_argument("--status", type=int, help="its HTTP status (default: the service's throttle status, e.g. 503 for s3)")
    how_many = add.add_mutually_exclusive_group()
    how_many.add_argument("--count", type=int, help="fail the next N matching requests (default 1)")
    how_many.add_argument("--rate", type=float, help="fail this share (0 < P <= 1) of the matching requests, until `fault clear`")
    add.add_argument("--delay", type=float, default=0.0, help="hold each matching request this many seconds, then serve it (a slow service)")
    add.add_argument("--match", help="only requests whose path, query or body contains this text (a key, table or queue name)")
    fault_commands.add_parser("list", help="the fault rules, what is left of them and how often each fired")
    fault_commands.add_parser("clear", help="remove every fault rule")
    for parser_ in (add, *fault_commands.choices.values()):
        if not any(a.dest == "endpoint_url" for a in parser_._actions):
            parser_.add_argument("--endpoint-url", help="a local stack's endpoint (default: the one `inferpipe local up` started)")

    model = commands.add_parser("model", help="model packages in the versioned model bucket")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    publish = model_commands.add_parser("publish", help="validate a package folder and publish it as a new version")
    publish.add_argument("package", type=Path, metavar="DIR")
    publish.add_argument("--name", required=True)
    publish.add_argument("--alias", help="point this alias (e.g. prod) at the published version")
    publish.add_argument(
        "--optimize", choices=["fp32", "fused", "int8"],
        help="publish this inference mode of the fp32 package DIR as its own version (int8 needs --calibration)",
    )
    publish.add_argument("--calibration", type=Path, metavar="IMAGES", help="folder of calibration images for --optimize int8")
    publish.add_argument("--heldout", type=Path, metavar="IMAGES", help="folder of images to measure top-1 agreement with fp32 on (default: the calibration images)")
    _add_target_options(publish)
    listing = model_commands.add_parser("list", help="published versions, sizes and aliases")
    listing.add_argument("name", nargs="?")
    _add_target_options(listing)
    promote = model_commands.add_parser("promote", help="move an alias to a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", required=True)
    _add_target_options(promote)
    _add_import_parser(model_commands)
    build = model_commands.add_parser("build-demo", help="train the tiny shapes model the tests and load runs use (about a minute)")
    build.add_argument("--out", type=Path, default=Path("build/demo-model"))
    build.add_argument("--seed", type=int, default=0)

    replay = commands.add_parser(
        "replay",
        help="replay failed executions (redrive where that can succeed, else restart); never duplicates",
        description="Replays executions that ended FAILED, TIMED_OUT or ABORTED. Redriven executions keep their ARN; restarted ones are named "
        "<original>-r<n>; an execution already replayed successfully, or with a replay still running, is skipped.",
    )
    replay.add_argument("--since", type=_duration, default="24h", help="only executions started this long ago or later (e.g. 30m, 24h, 7d; default 24h)")
    replay.add_argument("--status", default="FAILED,TIMED_OUT,ABORTED", help="comma-separated statuses to replay (default FAILED,TIMED_OUT,ABORTED)")
    replay.add_argument("--execution", action="append", default=[], metavar="ARN", help="replay this execution (repeatable); ignores --since and --status")
    replay.add_argument(
        "--mode", choices=["auto", "restart", "redrive"], default="auto",
        help="auto (default): redrive an execution that stopped at a task, timed out or was stopped, restart one that "
        "ended in PipelineFailed (its input is at fault), and say why; restart: always a new execution with the original "
        "input; redrive: RedriveExecution wherever allowed, else restart",
    )
    replay.add_argument("--dry-run", action="store_true", help="only list what would be replayed and what would be skipped")
    replay.add_argument("--no-wait", action="store_true", help="start the replays and return without waiting for their outcome")
    replay.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the replays (default 600)")
    _add_target_options(replay)

    reconcile = commands.add_parser(
        "reconcile",
        help="check every sink holds one current record per uploaded object version; exit 1 on missing, duplicated or stale records",
        description="Compares the input bucket's object versions written within --since with each sink's records and the "
        "failure records, and prints per sink: objects, records, missing, duplicates, stale, failed.",
    )
    reconcile.add_argument("--since", type=_duration, default="24h", help="object versions written this long ago or later (e.g. 30m, 24h, 7d; default 24h)")
    reconcile.add_argument("--prefix", default="", help="only keys under this prefix of the input bucket")
    reconcile.add_argument("--json", action="store_true", help="print one JSON object: bucket, since, sinks{sink: counts}, totals, examples")
    _add_target_options(reconcile)

    logs = commands.add_parser(
        "logs",
        help="a function's CloudWatch Logs (its own lines and Lambda's START/END/REPORT), oldest first",
    )
    logs.add_argument("function", help="preprocess, inference, sink, or a function's full name")
    logs.add_argument("--since", type=_duration, default="10m", help="from this long ago (e.g. 90s, 10m, 24h; default 10m)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until interrupted")
    _add_target_options(logs)

    executions = commands.add_parser("executions", help="look at executions: list them, or show one's path, error, records and log lines")
    execution_commands = executions.add_subparsers(dest="executions_command", required=True)
    listing_executions = execution_commands.add_parser("list", help="the newest executions, newest first, with their objects and errors")
    listing_executions.add_argument("--status", default="", help="comma-separated statuses (RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED); default all")
    listing_executions.add_argument("--since", type=_duration, default=None, help="only executions started this long ago or later (e.g. 30m, 24h, 7d)")
    listing_executions.add_argument("--key", default=None, help="only executions naming an object whose key contains this")
    listing_executions.add_argument("--limit", type=_positive_int, default=50, help="at most this many (default 50)")
    listing_executions.add_argument("--json", action="store_true", help="print a JSON array instead of the table")
    _add_target_options(listing_executions)
    showing = execution_commands.add_parser("show", help="one execution: objects, path through the states with durations, where it stopped, records, logs")
    showing.add_argument("execution", metavar="NAME_OR_ARN", help="the execution's name (of the pipeline's state machine) or its ARN")
    showing.add_argument("--no-logs", action="store_true", help="do not read the functions' log groups")
    showing.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    _add_target_options(showing)

    backfill = commands.add_parser("backfill", help="classify every object already under an S3 prefix (a Distributed Map of batches)")
    backfill.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="the objects to classify")
    backfill.add_argument("--batch-size", type=int, default=None, help="objects per execution (default and maximum: MAX_BATCH_OBJECTS, 100)")
    backfill.add_argument("--model", help="model name (default: the deployment's)")
    backfill.add_argument("--model-version", help="model version or alias (default: the deployment's)")
    backfill.add_argument("--dry-run", action="store_true", help="list and count what would be classified; start nothing")
    backfill.add_argument("--json", action="store_true", help="print only the summary, as one JSON object")
    _add_target_options(backfill)

    cost = commands.add_parser(
        "cost",
        help="what the local stack's recent work would cost on AWS at list prices (config/prices.json)",
    )
    cost.add_argument("--since", type=_duration, default="1h", help="the work of this long ago until now (e.g. 10m, 1h; default 1h)")
    cost.add_argument("--json", action="store_true", help="print only a JSON object: images, usd_total, usd_per_million_images, by_service, lines")
    _add_target_options(cost)

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
    if args.command == "backfill":
        return _backfill(args)
    if args.command == "model":
        return _model(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "reconcile":
        return _reconcile(args)
    if args.command == "logs":
        return _logs(args)
    if args.command == "cost":
        return _cost(args)
    if args.command == "executions":
        return _executions(args)
    if args.command == "demo":
        from inferpipe.demo import run_demo

        return run_demo(endpoint_url=args.endpoint_url, port=args.port)
    raise AssertionError(args.command)  # argparse guarantees one of the above


def _target(args: argparse.Namespace, quiet: bool = False) -> Any:
    from inferpipe.target import Target

    return Target.connect(
        endpoint_url=args.endpoint_url,
        port=args.port,
        state_dir=STATE_DIR,
        quiet=quiet,
        aws=getattr(args, "aws", None),
        terraform_output=getattr(args, "terraform_output", None),
    )


def _classify(args: argparse.Namespace) -> int:
    from inferpipe.classify import NoModelError, UploadOptions, classify_files, ensure_model

    target = _target(args, quiet=args.json)
    options = UploadOptions(top_k=args.top_k, model=args.model, model_version=args.model_version)
    try:
        ensure_model(target, options, say=lambda line: print(line, file=sys.stderr))
    except NoModelError as missing:
        print(f"inferpipe: error: {missing}", file=sys.stderr)
        return 2
    progress = _Progress(len(args.paths), sys.stderr, live=not args.json)
    try:
        results = classify_files(target, args.paths, options=options, timeout=args.timeout,
                                 on_upload=progress.uploaded, on_progress=progress.finished)
    finally:
        progress.close()
    if args.json:
        print(json.dumps([result.to_json() for result in results], ensure_ascii=False, indent=2))
    else:
        print_table(results)
    return 0 if all(result.status == "succeeded" for result in results) else 1


class _Progress:
    """One status line on a terminal's stderr, rewritten in place: files uploaded, executions
    finished, failures so far. Nothing when stderr is not a terminal (a pipe, a log) or with --json."""

    def __init__(self, total: int, stream: Any, live: bool = True) -> None:
        self.total, self.stream = total, stream
        self.live = live and bool(getattr(stream, "isatty", lambda: False)())
        self.sent = self.done = self.failed = 0

    def uploaded(self, result: Any) -> None:
        self.sent += 1
        if result.error is not None:  # never started (no such file, refused): finished, failed
            self.done, self.failed = self.done + 1, self.failed + 1
        self._show()

    def finished(self, result: Any) -> None:
        self.done += 1
        self.failed += result.status != "succeeded"
        self._show()

    def _show(self) -> None:
        if self.live:
            self.stream.write(f"\r{self.sent}/{self.total} uploaded · {self.done}/{self.total} finished · {self.failed} failed")
            self.stream.flush()

    def close(self) -> None:
        if self.live and (self.sent or self.done):
            self.stream.write("\n")
            self.stream.flush()


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
                error,  # the last column, never cut: the useful part of a message is often at its end
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _replay(args: argparse.Namespace) -> int:
    from inferpipe import replay

    since = args.since
    try:
        statuses = replay.parse_statuses(args.status)
    except ValueError as bad:
        print(f"inferpipe: error: {bad}", file=sys.stderr)
        return 2
    target = _target(args)
    s3, output = target.client("s3"), target.resources.buckets["output"]
    summary = replay.replay(
        target.client("stepfunctions"),
        target.state_machine_arn,
        supersession=lambda execution_input: replay.superseded(s3, output, target.resources.settings["OUTPUT_PREFIX"], execution_input),
        since=since,
        statuses=statuses,
        executions=args.execution,
        mode=args.mode,
        dry_run=args.dry_run,
        wait=not args.no_wait,
        timeout=args.timeout,
    )
    print(replay.format_summary(summary, dry_run=args.dry_run))
    return 1 if summary.still_failing else 0


def _reconcile(args: argparse.Namespace) -> int:
    from inferpipe import reconcile

    report = reconcile.reconcile_target(_target(args), args.since, prefix=args.prefix)
    print(json.dumps(report.to_dict(), indent=2) if args.json else reconcile.format_report(report))
    return 1 if report.problems else 0


def _logs(args: argparse.Namespace) -> int:
    from inferpipe import logs

    target = _target(args, quiet=True)
    try:
        group = logs.log_group(target.resources, args.function)
        logs.tail(target.client("logs"), group, args.since, follow=args.follow)
    except ValueError as bad:
        print(f"inferpipe: error: {bad}", file=sys.stderr)
        return 2
    return 0


def _executions(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from datetime import datetime, timezone

    from inferpipe import executions
    from inferpipe.replay import ALL_STATUSES

    if args.executions_command == "show":
        target = _target(args, quiet=args.json)
        try:
            detail = executions.show(target, args.execution, with_logs=not args.no_logs)
        except ValueError as bad:
            print(f"inferpipe: error: {bad}", file=sys.stderr)
            return 2
        print(json.dumps(detail.to_dict(), ensure_ascii=False, indent=2) if args.json else executions.format_detail(detail))
        return 0
    since = datetime.now(timezone.utc) - args.since if args.since else None
    statuses = [s.strip().upper() for s in args.status.split(",") if s.strip()]
    unknown = [s for s in statuses if s not in ALL_STATUSES]
    if unknown:
        print(f"inferpipe: error: --status: unknown status {', '.join(unknown)}; expected some of {', '.join(ALL_STATUSES)}", file=sys.stderr)
        return 2
    target = _target(args, quiet=args.json)
    rows = executions.list_rows(target.client("stepfunctions"), target.state_machine_arn, statuses=statuses, since=since,
                                key=args.key, limit=args.limit)
    print(json.dumps([asdict(row) for row in rows], ensure_ascii=False, indent=2) if args.json else executions.format_rows(rows))
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from inferpipe import backfill

    target = _target(args, quiet=args.json)
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        summary = backfill.backfill(
            target, args.uri, batch_size=args.batch_size, model=args.model, model_version=args.model_version,
            dry_run=args.dry_run, on_progress=progress,
        )
    except backfill.BackfillError as bad:
        print(f"inferpipe: error: {bad}", file=sys.stderr)
        return 2
    if args.json:
        data = summary.to_json()
        print(json.dumps(data, indent=2))
    else:
        print(backfill.format_summary(summary))
    return 0 if summary.status in ("SUCCEEDED", "DRY_RUN") and not summary.failed else 1


def _cost(args: argparse.Namespace) -> int:
    from inferpipe import cost

    try:
        since = cost.since_epoch(args.since.total_seconds())
    except ValueError as bad:
        print(f"inferpipe: error: --since: {bad}", file=sys.stderr)
        return 2
    target = _target(args, quiet=True)
    try:
        estimate = cost.price(cost.measure(target, since))
    except ValueError as bad:
        print(f"inferpipe: error: {bad}", file=sys.stderr)
        return 2
    print(json.dumps(estimate.to_json(), indent=2) if args.json else cost.format_table(estimate))
    return 0


def _trigger_modes() -> tuple[str, ...]:
    from inferpipe.stack.resources import render_resources

    return render_resources().trigger_buffer.modes


def _local(args: argparse.Namespace) -> int:
    from inferpipe.local import daemon

    if args.action == "fault":
        return _local_fault(args)
    if args.action == "up":
        from inferpipe.local.persistence import SNAPSHOT_FILE

        snapshot = STATE_DIR / SNAPSHOT_FILE
        kept = snapshot.exists() and not args.fresh and not daemon.status(state_dir=STATE_DIR)["running"]
        info = daemon.up(port=args.port, state_dir=STATE_DIR, trigger=args.trigger, fresh=args.fresh)
        if not info.get("already_running"):
            print(f"state: {'restored from ' + str(snapshot) if kept else 'empty (a new stack)'}; it is kept in {STATE_DIR} "
                  "until `inferpipe local up --fresh`")
        print(f"local stack running at {info['endpoint_url']} (pid {info['pid']}, {info['trigger']['mode']} trigger); "
              f"console: {info['endpoint_url']}/console")
        return 0
    if args.action == "down":
        stopped = daemon.down(state_dir=STATE_DIR)
        print("local stack stopped" if stopped else "local stack was not running")
        return 0
    status = daemon.status(state_dir=STATE_DIR)
    print(json.dumps(status, indent=2, default=str))
    if not status.get("running"):
        print(f"inferpipe: {status.get('problem', 'the local stack is not running')}; to start one: {status.get('fix', 'inferpipe local up')}",
              file=sys.stderr)
    return 0 if status.get("running") else 3


def _local_fault(args: argparse.Namespace) -> int:
    """``inferpipe local fault add|list|clear``: the running stack's /_inferpipe/faults."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from inferpipe.local import daemon
    from inferpipe.local.guard import TOKEN_HEADER

    endpoint = args.endpoint_url
    if not endpoint:
        status = daemon.status(state_dir=STATE_DIR)
        endpoint = status.get("endpoint_url") if status.get("running") else None
        if not endpoint:
            print("inferpipe: error: no local stack is running (start one with `inferpipe local up`)", file=sys.stderr)
            return 2
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"inferpipe: error: {endpoint} is not a local stack: faults are injected on loopback only", file=sys.stderr)
        return 2
    token = daemon.control_token(STATE_DIR)
    if not token:
        print(f"inferpipe: error: no control token for {endpoint}: it is in the state folder of the `inferpipe local up` "
              f"that started the stack ({STATE_DIR}), or in INFERPIPE_LOCAL_TOKEN", file=sys.stderr)
        return 2
    body: bytes | None = None
    method = {"add": "POST", "list": "GET", "clear": "DELETE"}[args.fault_action]
    if args.fault_action == "add":
        service, _, operation = args.target.partition(":")
        spec = {"service": service, "operation": operation or None, "error": args.error, "status": args.status,
                "count": args.count, "rate": args.rate, "delay": args.delay, "match": args.match}
        if args.count is None and args.rate is None:
            spec["count"] = 1
        body = json.dumps({k: v for k, v in spec.items() if v is not None}).encode()
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/_inferpipe/faults", data=body, method=method,
                                     headers={TOKEN_HEADER: token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the local stack, on loopback
            result = json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        raw = refused.read()
        try:
            detail = json.loads(raw or b"{}").get("error") or refused.reason
        except ValueError:
            detail = raw.decode("utf-8", "replace").strip() or refused.reason
        print(f"inferpipe: error: the local stack at {endpoint} refused: HTTP {refused.code}: {detail}", file=sys.stderr)
        return 2
    except urllib.error.URLError as unreachable:
        print(f"inferpipe: error: no local stack answers at {endpoint}: {unreachable.reason}", file=sys.stderr)
        return 2
    if args.fault_action == "add":
        print(f"fault added: {_fault_line(result['rule'])}")
    elif args.fault_action == "clear":
        print(f"cleared {result['cleared']} fault rule(s)")
    else:
        print("\n".join(_fault_line(rule) for rule in result["rules"]) or "no fault rules")
    return 0


def _fault_line(rule: dict[str, Any]) -> str:
    what = f"held {rule['delay']:g} s" if rule["delay"] else f"{rule['error']} (HTTP {rule['status']})"
    how = f"{rule['rate']:.0%} of requests" if rule["rate"] is not None else "every request"
    left = "until cleared" if rule["remaining"] is None else f"{rule['remaining']} left"
    where = f" matching {rule['match']!r}" if rule["match"] else ""
    return f"{rule['service']}:{rule['operation']}{where}: {what}, {how}, {left}, fired {rule['fired']}"


def _model(args: argparse.Namespace) -> int:
    from inferpipe import models

    if args.model_command == "build-demo":
        from inferpipe.demo_model.train import build_demo_model

        manifest = build_demo_model(args.out, seed=args.seed)
        print(f"demo model {manifest.name} ({manifest.architecture}) written to {args.out}")
        return 0
    if args.model_command == "import":
        return _model_import(args)
    validated = None
    if args.model_command == "publish" and getattr(args, "optimize", None) in (None, "fp32"):
        validated = models.load_package_dir(args.package)  # a bad package fails here, before any AWS call
    target = _target(args)
    s3 = target.client("s3")
    bucket = target.resources.buckets["models"]
    if args.model_command == "publish":
        if args.optimize and args.optimize != "fp32":
            import tempfile

            from inferpipe.optimize import load_images, optimize_package, read_package

            with tempfile.TemporaryDirectory() as tmp:
                spec = read_package(args.package)[0].input
                heldout = load_images(args.heldout, spec) if args.heldout else None
                optimized = optimize_package(args.package, Path(tmp) / args.optimize, args.optimize, calibration=args.calibration, heldout=heldout)
                m = optimized.metrics
                print(f"{args.optimize}: {m['fused_nodes']} fused conv nodes, top-1 agreement with fp32 "
                      f"{m['agreement_top1_vs_fp32']:.2%} on {m['agreement_images']} {m['agreement_set']} images")
                manifest = models.publish(s3, bucket, Path(tmp) / args.optimize, name=args.name, alias=args.alias)
        else:
            result = models.publish_package(s3, bucket, args.package, name=args.name, alias=args.alias, validated=validated)
            _print_published(result, bucket, args.alias)
            return 0
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
    table = [("NAME", "VERSION", "PUBLISHED (UTC)", "SIZE", "ALIASES")]
    table += [(r["name"], r["version"], r["created"], _human_size(r["size"]), ", ".join(r["aliases"]) or "-") for r in rows]
    widths = [max(len(row[col]) for row in table) for col in range(4)]
    for row in table:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]), row[3].rjust(widths[3]), row[4]]
        print("  ".join(cells))
    return 0


def _human_size(size: int) -> str:
    """1536 -> '1.5 KiB'; bytes below 1 KiB as they are."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _print_published(result: Any, bucket: str, alias: str | None) -> None:
    manifest = result.manifest
    where = f"s3://{bucket}/{result.manifest_key}"
    if result.manifest_version_id:
        where += f" (S3 version id {result.manifest_version_id})"
    if result.created:
        print(f"published {manifest.name} version {manifest.version}: {where}")
    else:
        print(f"{manifest.name} version {manifest.version} was already published (same content; nothing uploaded): {where}")
    if alias:
        print(f"{manifest.name}: alias {alias} -> {manifest.version}")


def _model_import(args: argparse.Namespace) -> int:
    """``model import``: write a package folder, optionally publish it; clear errors, no traceback."""
    import contextlib
    import io

    from functions.common.manifest import InputSpec, parse_labels
    from inferpipe import models

    files_given = [flag for flag, value in (("--symbol", args.symbol), ("--params", args.params)) if value]
    if bool(args.zoo_name) == bool(files_given) or (files_given and (len(files_given) < 2 or not args.labels)):
        print(
            "inferpipe model import: give either a model-zoo name (e.g. resnet50_v1 [--pretrained]) or all of "
            "--symbol, --params and --labels",
            file=sys.stderr,
        )
        return 2
    if args.alias and not args.publish:
        print("inferpipe model import: --alias needs --publish", file=sys.stderr)
        return 2
    if files_given and not args.name:
        print("inferpipe model import: --name is required with --symbol/--params/--labels", file=sys.stderr)
        return 2
    if args.pretrained and not args.zoo_name:
        print("inferpipe model import: --pretrained only applies to a model-zoo name", file=sys.stderr)
        return 2
    spec = InputSpec(
        height=args.height, width=args.width, resize_shorter=args.resize_shorter, interpolation=args.interpolation,
        mean=tuple(args.mean), std=tuple(args.std),  # type: ignore[arg-type]
    )
    name = args.name or args.zoo_name
    out = args.out or Path("build/models") / name
    from inferpipe.pretrained import PRETRAINED, import_pretrained

    if args.zoo_name in PRETRAINED:
        if not args.pretrained:
            print(f"inferpipe model import: {args.zoo_name} is packaged with its ImageNet weights only: add --pretrained", file=sys.stderr)
            return 2
        manifest = import_pretrained(args.zoo_name, out, package_name=name, mode=args.optimize)
        weights = f"pretrained ImageNet weights, {manifest.inference_mode}"
    elif args.zoo_name:
        labels = parse_labels(args.labels.read_bytes()) if args.labels else None
        if args.pretrained:
            print(f"downloading the pretrained weights of {args.zoo_name} from the MXNet model zoo ...", file=sys.stderr)
        chatter = io.StringIO()  # MXNet prints every download attempt on stdout
        try:
            with contextlib.redirect_stdout(chatter):
                manifest = models.import_model_zoo(
                    args.zoo_name, args.pretrained, out, labels=labels, seed=args.seed, package_name=name, spec=spec
                )
        except models.PretrainedWeightsUnavailableError as exc:
            print(f"inferpipe: error: {exc}", file=sys.stderr)
            print(
                "inferpipe: --pretrained needs internet access; without it, omit --pretrained for random weights, "
                "or export the network where internet exists and import it with --symbol/--params/--labels",
                file=sys.stderr,
            )
            return 2
        if args.architecture:
            print("note: --architecture is ignored for a model-zoo import (the zoo name is recorded)", file=sys.stderr)
        weights = "pretrained ImageNet weights" if args.pretrained else f"RANDOM weights (seed {args.seed}; predictions are meaningless)"
    else:
        manifest = models.import_files(
            args.symbol, args.params, args.labels, out, name=name, spec=spec, architecture=args.architecture or "custom",
            inference_mode=args.inference_mode,
        )
        weights = "your weights"
    print(f"package {manifest.name} version {manifest.version} ({manifest.architecture}, {manifest.num_classes} classes, {weights}) written to {out}")
    if args.publish:
        target = _target(args)
        result = models.publish_package(target.client("s3"), target.resources.buckets["models"], out, name=name, alias=args.alias)
        _print_published(result, target.resources.buckets["models"], args.alias)
    return 0


if __name__ == "__main__":
    sys.exit(main())
