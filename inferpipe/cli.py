"""The ``inferpipe`` command: classify files, run the local stack, manage model packages, demo.

This module runs a parsed command and presents its outcome (text, ``--json``, exit status); the
arguments are defined in inferpipe.arguments and the work is done by each subject's own module.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferpipe.arguments import build_parser
from inferpipe.paths import STATE_DIR
from inferpipe.present import Progress

if TYPE_CHECKING:
    from functions.common.manifest import InputSpec, Manifest

# MXNet logs a C++ line each time it builds a oneDNN subgraph: noise in a CLI's output.
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (the CLI never shows a traceback: it says what went wrong)
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


def _error(message: object) -> int:
    """A usage or input error: one line on stderr, exit status 2."""
    print(f"inferpipe: error: {message}", file=sys.stderr)
    return 2


def _classify(args: argparse.Namespace) -> int:
    from inferpipe.classify import NoModelError, UploadOptions, classify_files, ensure_model, format_results

    target = _target(args, quiet=args.json)
    options = UploadOptions(top_k=args.top_k, model=args.model, model_version=args.model_version)
    try:
        ensure_model(target, options, say=lambda line: print(line, file=sys.stderr))
    except NoModelError as missing:
        return _error(missing)
    progress = Progress(len(args.paths), sys.stderr, live=not args.json)
    try:
        results = classify_files(
            target,
            args.paths,
            options=options,
            timeout=args.timeout,
            on_upload=progress.uploaded,
            on_progress=progress.finished,
        )
    finally:
        progress.close()
    if args.json:
        print(json.dumps([result.to_json() for result in results], ensure_ascii=False, indent=2))
    else:
        print(format_results(results))
    return 0 if all(result.status == "succeeded" for result in results) else 1


def _replay(args: argparse.Namespace) -> int:
    from inferpipe import replay

    try:
        statuses = replay.parse_statuses(args.status)
    except ValueError as bad:
        return _error(bad)
    summary = replay.replay_target(
        _target(args),
        since=args.since,
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
        return _error(bad)
    return 0


def _executions(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from datetime import UTC, datetime

    from inferpipe import executions

    if args.executions_command == "show":
        target = _target(args, quiet=args.json)
        try:
            detail = executions.show(target, args.execution, with_logs=not args.no_logs)
        except ValueError as bad:
            return _error(bad)
        if args.json:
            print(json.dumps(detail.to_dict(), ensure_ascii=False, indent=2))
        else:
            print(executions.format_detail(detail))
        return 0
    since = datetime.now(UTC) - args.since if args.since else None
    try:
        statuses = executions.parse_statuses(args.status)
    except ValueError as bad:
        return _error(bad)
    target = _target(args, quiet=args.json)
    rows = executions.list_rows(
        target.client("stepfunctions"),
        target.state_machine_arn,
        statuses=statuses,
        since=since,
        key=args.key,
        limit=args.limit,
    )
    if args.json:
        print(json.dumps([asdict(row) for row in rows], ensure_ascii=False, indent=2))
    else:
        print(executions.format_rows(rows))
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from inferpipe import backfill

    target = _target(args, quiet=args.json)
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        summary = backfill.backfill(
            target,
            args.uri,
            batch_size=args.batch_size,
            model=args.model,
            model_version=args.model_version,
            dry_run=args.dry_run,
            on_progress=progress,
        )
    except backfill.BackfillError as bad:
        return _error(bad)
    print(json.dumps(summary.to_json(), indent=2) if args.json else backfill.format_summary(summary))
    return 0 if summary.status in ("SUCCEEDED", "DRY_RUN") and not summary.failed else 1


def _cost(args: argparse.Namespace) -> int:
    from inferpipe import cost

    try:
        since = cost.since_epoch(args.since.total_seconds())
    except ValueError as bad:
        return _error(f"--since: {bad}")
    target = _target(args, quiet=True)
    try:
        estimate = cost.price(cost.measure(target, since))
    except ValueError as bad:
        return _error(bad)
    print(json.dumps(estimate.to_json(), indent=2) if args.json else cost.format_table(estimate))
    return 0


def _local(args: argparse.Namespace) -> int:
    from inferpipe.local import daemon

    if args.action == "fault":
        return _local_fault(args)
    if args.action == "up":
        return _local_up(args)
    if args.action == "down":
        stopped = daemon.down(state_dir=STATE_DIR)
        print("local stack stopped" if stopped else "local stack was not running")
        return 0
    status = daemon.status(state_dir=STATE_DIR)
    print(json.dumps(status, indent=2, default=str))
    if not status.get("running"):
        print(
            f"inferpipe: {status.get('problem', 'the local stack is not running')}; "
            f"to start one: {status.get('fix', 'inferpipe local up')}",
            file=sys.stderr,
        )
    return 0 if status.get("running") else 3


def _local_up(args: argparse.Namespace) -> int:
    from inferpipe.local import daemon
    from inferpipe.local.persistence import SNAPSHOT_FILE

    snapshot = STATE_DIR / SNAPSHOT_FILE
    kept = snapshot.exists() and not args.fresh and not daemon.status(state_dir=STATE_DIR)["running"]
    info = daemon.up(port=args.port, state_dir=STATE_DIR, trigger=args.trigger, fresh=args.fresh)
    if not info.get("already_running"):
        state = f"restored from {snapshot}" if kept else "empty (a new stack)"
        print(f"state: {state}; it is kept in {STATE_DIR} until `inferpipe local up --fresh`")
    print(
        f"local stack running at {info['endpoint_url']} (pid {info['pid']}, {info['trigger']['mode']} trigger); "
        f"console: {info['endpoint_url']}/console"
    )
    return 0


def _local_fault(args: argparse.Namespace) -> int:
    """``inferpipe local fault add|list|clear``: the running stack's /_inferpipe/faults."""
    from inferpipe import fault_control as faults

    try:
        endpoint = faults.local_endpoint(args.endpoint_url, STATE_DIR)
        token = faults.token_for(endpoint, STATE_DIR)
        spec = None
        if args.fault_action == "add":
            spec = faults.rule_spec(
                args.target,
                error=args.error,
                status=args.status,
                count=args.count,
                rate=args.rate,
                delay=args.delay,
                match=args.match,
            )
        result = faults.send(endpoint, args.fault_action, spec, token=token)
    except faults.FaultControlError as refused:
        return _error(refused)
    if args.fault_action == "add":
        print(f"fault added: {faults.describe(result['rule'])}")
    elif args.fault_action == "clear":
        print(f"cleared {result['cleared']} fault rule(s)")
    else:
        print("\n".join(faults.describe(rule) for rule in result["rules"]) or "no fault rules")
    return 0


def _model(args: argparse.Namespace) -> int:
    from inferpipe import models

    if args.model_command == "build-demo":
        from inferpipe.demo_model.train import build_demo_model

        manifest = build_demo_model(args.out, seed=args.seed)
        print(f"demo model {manifest.name} ({manifest.architecture}) written to {args.out}")
        return 0
    if args.model_command == "import":
        return _model_import(args)
    if args.model_command == "publish":
        return _model_publish(args)
    target = _target(args)
    s3, bucket = target.client("s3"), target.resources.buckets["models"]
    if args.model_command == "promote":
        models.set_alias(s3, bucket, args.name, args.alias, args.version)
        print(f"{args.name}: alias {args.alias} -> {args.version}")
        return 0
    rows = models.list_versions(s3, bucket, args.name)
    if not rows:
        print("no models published" + (f" under the name {args.name}" if args.name else ""))
        return 0
    print(models.format_versions(rows))
    return 0


def _model_publish(args: argparse.Namespace) -> int:
    from inferpipe import models
    from inferpipe.packaging import load_package_dir

    if args.optimize in (None, "fp32"):
        validated = load_package_dir(args.package)  # a bad package fails here, before any AWS call
        target = _target(args)
        bucket = target.resources.buckets["models"]
        result = models.publish_package(
            target.client("s3"), bucket, args.package, name=args.name, alias=args.alias, validated=validated
        )
        _print_published(result, bucket, args.alias)
        return 0

    def optimized(m: Mapping[str, Any]) -> None:
        print(
            f"{args.optimize}: {m['fused_nodes']} fused conv nodes, top-1 agreement with fp32 "
            f"{m['agreement_top1_vs_fp32']:.2%} on {m['agreement_images']} {m['agreement_set']} images"
        )

    target = _target(args)
    manifest = models.publish_optimized(
        target.client("s3"),
        target.resources.buckets["models"],
        args.package,
        args.optimize,
        name=args.name,
        alias=args.alias,
        calibration=args.calibration,
        heldout=args.heldout,
        on_optimized=optimized,
    )
    alias = f", alias {args.alias} -> {manifest.version}" if args.alias else ""
    print(f"published {manifest.name} version {manifest.version}{alias}")
    return 0


def _print_published(result: Any, bucket: str, alias: str | None) -> None:
    manifest = result.manifest
    where = f"s3://{bucket}/{result.manifest_key}"
    if result.manifest_version_id:
        where += f" (S3 version id {result.manifest_version_id})"
    if result.created:
        print(f"published {manifest.name} version {manifest.version}: {where}")
    else:
        print(
            f"{manifest.name} version {manifest.version} was already published (same content; nothing uploaded): {where}"
        )
    if alias:
        print(f"{manifest.name}: alias {alias} -> {manifest.version}")


def _model_import(args: argparse.Namespace) -> int:
    """``model import``: write a package folder, optionally publish it; clear errors, no traceback."""
    from inferpipe import models

    problem = _import_problem(args)
    if problem:
        print(f"inferpipe model import: {problem}", file=sys.stderr)
        return 2
    name = args.name or args.zoo_name
    out = args.out or Path("build/models") / name
    imported = _import_package(args, name, out)
    if imported is None:
        return 2
    manifest, weights = imported
    print(
        f"package {manifest.name} version {manifest.version} ({manifest.architecture}, {manifest.num_classes} classes, "
        f"{weights}) written to {out}"
    )
    if args.publish:
        target = _target(args)
        bucket = target.resources.buckets["models"]
        result = models.publish_package(target.client("s3"), bucket, out, name=name, alias=args.alias)
        _print_published(result, bucket, args.alias)
    return 0


def _import_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``model import``'s arguments, if anything."""
    from inferpipe.pretrained import PRETRAINED

    files_given = [flag for flag, value in (("--symbol", args.symbol), ("--params", args.params)) if value]
    if bool(args.zoo_name) == bool(files_given) or (files_given and (len(files_given) < 2 or not args.labels)):
        return (
            "give either a model-zoo name (e.g. resnet50_v1 [--pretrained]) or all of --symbol, --params and --labels"
        )
    if args.alias and not args.publish:
        return "--alias needs --publish"
    if files_given and not args.name:
        return "--name is required with --symbol/--params/--labels"
    if args.pretrained and not args.zoo_name:
        return "--pretrained only applies to a model-zoo name"
    if args.zoo_name in PRETRAINED and not args.pretrained:
        return f"{args.zoo_name} is packaged with its ImageNet weights only: add --pretrained"
    return None


def _import_package(args: argparse.Namespace, name: str, out: Path) -> tuple[Manifest, str] | None:
    """The package ``model import`` writes and what its weights are; None when the zoo's could not be had."""
    from functions.common.manifest import InputSpec
    from inferpipe import packaging
    from inferpipe.pretrained import PRETRAINED, import_pretrained

    if args.zoo_name in PRETRAINED:
        manifest = import_pretrained(args.zoo_name, out, package_name=name, mode=args.optimize)
        return manifest, f"pretrained ImageNet weights, {manifest.inference_mode}"
    mean, std = args.mean, args.std
    spec = InputSpec(
        height=args.height,
        width=args.width,
        resize_shorter=args.resize_shorter,
        interpolation=args.interpolation,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
    )
    if not args.zoo_name:
        manifest = packaging.import_files(
            args.symbol,
            args.params,
            args.labels,
            out,
            name=name,
            spec=spec,
            architecture=args.architecture or "custom",
            inference_mode=args.inference_mode,
        )
        return manifest, "your weights"
    zoo = _import_zoo(args, name, out, spec)
    if zoo is None:
        return None
    if args.architecture:
        print("note: --architecture is ignored for a model-zoo import (the zoo name is recorded)", file=sys.stderr)
    random = f"RANDOM weights (seed {args.seed}; predictions are meaningless)"
    return zoo, "pretrained ImageNet weights" if args.pretrained else random


def _import_zoo(args: argparse.Namespace, name: str, out: Path, spec: InputSpec) -> Manifest | None:
    """A Gluon model-zoo network as a package, MXNet's download chatter kept off stdout; None when offline."""
    import contextlib
    import io

    from functions.common.manifest import parse_labels
    from inferpipe import packaging

    labels = parse_labels(args.labels.read_bytes()) if args.labels else None
    if args.pretrained:
        print(f"downloading the pretrained weights of {args.zoo_name} from the MXNet model zoo ...", file=sys.stderr)
    chatter = io.StringIO()  # MXNet prints every download attempt on stdout
    try:
        with contextlib.redirect_stdout(chatter):
            return packaging.import_model_zoo(
                args.zoo_name, args.pretrained, out, labels=labels, seed=args.seed, package_name=name, spec=spec
            )
    except packaging.PretrainedWeightsUnavailableError as exc:
        _error(exc)
        print(
            "inferpipe: --pretrained needs internet access; without it, omit --pretrained for random weights, "
            "or export the network where internet exists and import it with --symbol/--params/--labels",
            file=sys.stderr,
        )
        return None


if __name__ == "__main__":
    sys.exit(main())
