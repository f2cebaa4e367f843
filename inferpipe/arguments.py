"""The ``inferpipe`` command's arguments: every subcommand and option with its help text (argparse).

``inferpipe.cli`` parses with ``build_parser()`` and runs the command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


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
    imp.add_argument(
        "zoo_name",
        nargs="?",
        metavar="NETWORK",
        help="efficientnet_lite0, or a Gluon model-zoo network, e.g. resnet50_v1",
    )
    imp.add_argument(
        "--pretrained",
        action="store_true",
        help="ImageNet weights: shipped offline for efficientnet_lite0, downloaded (internet) for the zoo",
    )
    imp.add_argument(
        "--optimize",
        default="auto",
        choices=["auto", "fp32", "fused", "int8"],
        help="efficientnet_lite0: the mode to write; auto (default) = the fastest whose top-1 agrees with fp32 on >= 95%% of held-out real photos",
    )
    imp.add_argument("--seed", type=int, default=0, help="seed of the random weights without --pretrained (default 0)")
    imp.add_argument("--symbol", type=Path, help="exported MXNet symbol JSON (its input named 'data')")
    imp.add_argument("--params", type=Path, help="exported MXNet params (arg:/aux: names)")
    imp.add_argument(
        "--labels", type=Path, help="class labels, one per line, line i = output i (zoo default: class_0 ...)"
    )
    imp.add_argument("--architecture", help="architecture recorded in the manifest (default: ZOO_NAME or 'custom')")
    imp.add_argument(
        "--inference-mode",
        default="fp32",
        choices=["fp32", "fused", "int8"],
        help="what the exported graph is (default fp32)",
    )
    imp.add_argument("--height", type=_positive_int, default=224, help="input crop height (default 224)")
    imp.add_argument("--width", type=_positive_int, default=224, help="input crop width (default 224)")
    imp.add_argument(
        "--resize-shorter", type=_positive_int, default=256, help="resize the shorter side to this first (default 256)"
    )
    imp.add_argument("--interpolation", default="bilinear", choices=["nearest", "bilinear", "bicubic", "lanczos"])
    imp.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=[0.485, 0.456, 0.406],
        metavar=("R", "G", "B"),
        help="per-channel mean on [0, 1] pixels (default ImageNet)",
    )
    imp.add_argument(
        "--std",
        type=float,
        nargs=3,
        default=[0.229, 0.224, 0.225],
        metavar=("R", "G", "B"),
        help="per-channel std (default ImageNet)",
    )
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
    classify.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for all executions (default 300)"
    )
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
    up.add_argument(
        "--fresh",
        action="store_true",
        help="start empty: forget the state kept in the state folder (models, objects, executions, …)",
    )
    up.add_argument(
        "--trigger",
        choices=_trigger_modes(),
        default=None,
        help="how uploads start executions: batched (default: S3 events buffered in SQS, one execution "
        "per batch of up to 100 within about a second) or direct (one execution per upload)",
    )
    local_commands.add_parser("down", help="stop the background local stack")
    local_commands.add_parser(
        "status", help="whether the local stack runs, where, and its resources (exit 3 when it does not)"
    )
    fault = local_commands.add_parser(
        "fault",
        help="fail (or slow down) AWS requests at the running local stack's edge, to rehearse an outage",
        description="Faults are answered in the service's own wire format before the emulator sees the request, so the "
        "functions' real retries, error classes and the state machine's Retry/Catch all run. They last until `fault clear` "
        "(or their --count is used up) and are lost when the stack stops.",
    )
    fault_commands = fault.add_subparsers(dest="fault_action", required=True, metavar="ACTION")
    add = fault_commands.add_parser("add", help="the next matching requests fail (or are held, with --delay)")
    add.add_argument(
        "target",
        metavar="SERVICE[:OPERATION]",
        help="by signing name and API operation, e.g. s3:GetObject, dynamodb:PutItem, sqs:SendMessageBatch, "
        "sns:PublishBatch, events:PutEvents, states:StartExecution; SERVICE alone: every operation",
    )
    add.add_argument("--error", help="the error code to answer (default: the service's throttle, e.g. SlowDown for s3)")
    add.add_argument(
        "--status", type=int, help="its HTTP status (default: the service's throttle status, e.g. 503 for s3)"
    )
    how_many = add.add_mutually_exclusive_group()
    how_many.add_argument("--count", type=int, help="fail the next N matching requests (default 1)")
    how_many.add_argument(
        "--rate", type=float, help="fail this share (0 < P <= 1) of the matching requests, until `fault clear`"
    )
    add.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="hold each matching request this many seconds, then serve it (a slow service)",
    )
    add.add_argument(
        "--match", help="only requests whose path, query or body contains this text (a key, table or queue name)"
    )
    fault_commands.add_parser("list", help="the fault rules, what is left of them and how often each fired")
    fault_commands.add_parser("clear", help="remove every fault rule")
    for parser_ in (add, *fault_commands.choices.values()):
        if not any(a.dest == "endpoint_url" for a in parser_._actions):
            parser_.add_argument(
                "--endpoint-url", help="a local stack's endpoint (default: the one `inferpipe local up` started)"
            )

    model = commands.add_parser("model", help="model packages in the versioned model bucket")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    publish = model_commands.add_parser("publish", help="validate a package folder and publish it as a new version")
    publish.add_argument("package", type=Path, metavar="DIR")
    publish.add_argument("--name", required=True)
    publish.add_argument("--alias", help="point this alias (e.g. prod) at the published version")
    publish.add_argument(
        "--optimize",
        choices=["fp32", "fused", "int8"],
        help="publish this inference mode of the fp32 package DIR as its own version (int8 needs --calibration)",
    )
    publish.add_argument(
        "--calibration", type=Path, metavar="IMAGES", help="folder of calibration images for --optimize int8"
    )
    publish.add_argument(
        "--heldout",
        type=Path,
        metavar="IMAGES",
        help="folder of images to measure top-1 agreement with fp32 on (default: the calibration images)",
    )
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
    build = model_commands.add_parser(
        "build-demo", help="train the tiny shapes model the tests and load runs use (about a minute)"
    )
    build.add_argument("--out", type=Path, default=Path("build/demo-model"))
    build.add_argument("--seed", type=int, default=0)

    replay = commands.add_parser(
        "replay",
        help="replay failed executions (redrive where that can succeed, else restart); never duplicates",
        description="Replays executions that ended FAILED, TIMED_OUT or ABORTED. Redriven executions keep their ARN; restarted ones are named "
        "<original>-r<n>; an execution already replayed successfully, or with a replay still running, is skipped.",
    )
    replay.add_argument(
        "--since",
        type=_duration,
        default="24h",
        help="only executions started this long ago or later (e.g. 30m, 24h, 7d; default 24h)",
    )
    replay.add_argument(
        "--status",
        default="FAILED,TIMED_OUT,ABORTED",
        help="comma-separated statuses to replay (default FAILED,TIMED_OUT,ABORTED)",
    )
    replay.add_argument(
        "--execution",
        action="append",
        default=[],
        metavar="ARN",
        help="replay this execution (repeatable); ignores --since and --status",
    )
    replay.add_argument(
        "--mode",
        choices=["auto", "restart", "redrive"],
        default="auto",
        help="auto (default): redrive an execution that stopped at a task, timed out or was stopped, restart one that "
        "ended in PipelineFailed (its input is at fault), and say why; restart: always a new execution with the original "
        "input; redrive: RedriveExecution wherever allowed, else restart",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="only list what would be replayed and what would be skipped"
    )
    replay.add_argument(
        "--no-wait", action="store_true", help="start the replays and return without waiting for their outcome"
    )
    replay.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the replays (default 600)")
    _add_target_options(replay)

    reconcile = commands.add_parser(
        "reconcile",
        help="check every sink holds one current record per uploaded object version; exit 1 on missing, duplicated or stale records",
        description="Compares the input bucket's object versions written within --since with each sink's records and the "
        "failure records, and prints per sink: objects, records, missing, duplicates, stale, failed.",
    )
    reconcile.add_argument(
        "--since",
        type=_duration,
        default="24h",
        help="object versions written this long ago or later (e.g. 30m, 24h, 7d; default 24h)",
    )
    reconcile.add_argument("--prefix", default="", help="only keys under this prefix of the input bucket")
    reconcile.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: bucket, since, sinks{sink: counts}, totals, examples",
    )
    _add_target_options(reconcile)

    logs = commands.add_parser(
        "logs",
        help="a function's CloudWatch Logs (its own lines and Lambda's START/END/REPORT), oldest first",
    )
    logs.add_argument("function", help="preprocess, inference, sink, or a function's full name")
    logs.add_argument(
        "--since", type=_duration, default="10m", help="from this long ago (e.g. 90s, 10m, 24h; default 10m)"
    )
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until interrupted")
    _add_target_options(logs)

    executions = commands.add_parser(
        "executions", help="look at executions: list them, or show one's path, error, records and log lines"
    )
    execution_commands = executions.add_subparsers(dest="executions_command", required=True)
    listing_executions = execution_commands.add_parser(
        "list", help="the newest executions, newest first, with their objects and errors"
    )
    listing_executions.add_argument(
        "--status",
        default="",
        help="comma-separated statuses (RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED); default all",
    )
    listing_executions.add_argument(
        "--since",
        type=_duration,
        default=None,
        help="only executions started this long ago or later (e.g. 30m, 24h, 7d)",
    )
    listing_executions.add_argument(
        "--key", default=None, help="only executions naming an object whose key contains this"
    )
    listing_executions.add_argument("--limit", type=_positive_int, default=50, help="at most this many (default 50)")
    listing_executions.add_argument("--json", action="store_true", help="print a JSON array instead of the table")
    _add_target_options(listing_executions)
    showing = execution_commands.add_parser(
        "show", help="one execution: objects, path through the states with durations, where it stopped, records, logs"
    )
    showing.add_argument(
        "execution", metavar="NAME_OR_ARN", help="the execution's name (of the pipeline's state machine) or its ARN"
    )
    showing.add_argument("--no-logs", action="store_true", help="do not read the functions' log groups")
    showing.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    _add_target_options(showing)

    backfill = commands.add_parser(
        "backfill", help="classify every object already under an S3 prefix (a Distributed Map of batches)"
    )
    backfill.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="the objects to classify")
    backfill.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="objects per execution (default and maximum: MAX_BATCH_OBJECTS, 100)",
    )
    backfill.add_argument("--model", help="model name (default: the deployment's)")
    backfill.add_argument("--model-version", help="model version or alias (default: the deployment's)")
    backfill.add_argument(
        "--dry-run", action="store_true", help="list and count what would be classified; start nothing"
    )
    backfill.add_argument("--json", action="store_true", help="print only the summary, as one JSON object")
    _add_target_options(backfill)

    cost = commands.add_parser(
        "cost",
        help="what the local stack's recent work would cost on AWS at list prices (config/prices.json)",
    )
    cost.add_argument(
        "--since", type=_duration, default="1h", help="the work of this long ago until now (e.g. 10m, 1h; default 1h)"
    )
    cost.add_argument(
        "--json",
        action="store_true",
        help="print only a JSON object: images, usd_total, usd_per_million_images, by_service, lines",
    )
    _add_target_options(cost)

    demo = commands.add_parser("demo", help="build the demo model if missing, start the local stack, classify samples")
    _add_target_options(demo)
    return parser


def _trigger_modes() -> tuple[str, ...]:
    from inferpipe.stack.resources import render_resources

    return render_resources().trigger_buffer.modes


__all__ = ["build_parser"]
