"""``inferpipe backfill s3://BUCKET/PREFIX``: classify every object already under a prefix.

On AWS it starts the backfill state machine (``state_machine/backfill.asl.json``: a Distributed
Map listing the prefix, cutting it into batches and running the pipeline once per batch) and
waits for it. Against the local stack, :mod:`inferpipe.local.distributed_map` runs the same
definition. Either way the summary is read from what the pipeline wrote: each batch execution's
batch document (which objects were classified, which failed and why).

Example::

    summary = backfill(target, "s3://my-input/photos/2024/", batch_size=100)
    summary.to_json()   # {"objects": 1200, "succeeded": 1197, "failed": 3, "errors": {"NotAnImageError": 3}, ...}
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferpipe.classify import execution_results, failed_delivery, object_error

BACKFILL_DEFINITION_VALUES = ("PipelineStateMachineArn", "OutputBucket", "BackfillResultsPrefix")


class BackfillError(ValueError):
    pass


@dataclass
class Summary:
    bucket: str
    prefix: str
    objects: int = 0
    succeeded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    executions: int = 0
    batches: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    results: dict[str, str] | None = None
    status: str = "SUCCEEDED"

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": dict(self.errors.most_common()),
            "executions": self.executions,
            "batches": self.batches,
            "seconds": round(self.seconds, 2),
            "status": self.status,
            "source": f"s3://{self.bucket}/{self.prefix}",
            "dry_run": self.dry_run,
            "results": self.results,
        }


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix); the prefix may be empty (the whole bucket)."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise BackfillError(f"{uri!r} is not an S3 URI; expected s3://BUCKET/PREFIX")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise BackfillError(f"{uri!r} names no bucket; expected s3://BUCKET/PREFIX")
    return bucket, prefix


def backfill_input(
    target: Any, bucket: str, prefix: str, batch_size: int | None, options: dict[str, Any]
) -> dict[str, Any]:
    """The backfill state machine's input (see the Comment of backfill.asl.json)."""
    limit = int(target.resources.settings["MAX_BATCH_OBJECTS"])
    size = batch_size or limit
    if not 1 <= size <= limit:
        raise BackfillError(f"--batch-size must be between 1 and {limit} (MAX_BATCH_OBJECTS), got {size}")
    return {
        "bucket": bucket,
        "prefix": prefix,
        "batch_size": size,
        "max_concurrency": target.resources.backfill.max_concurrency,
        "tolerated_failure_percentage": target.resources.backfill.tolerated_failure_percentage,
        "options": options,
    }


def _tally(
    summary: Summary, target: Any, status: str, execution_arn: str | None, objects: int, error: str | None
) -> None:
    """Add one batch's outcome, object by object, as ``inferpipe classify`` decides it (:func:`object_error`)."""
    summary.batches += 1
    # ERROR: the batch's outcome is unknown (it could not start, or the stack failed while it ran)
    entries = execution_results(target, execution_arn) if execution_arn and status != "ERROR" else []
    if execution_arn:
        summary.executions += 1
    execution_error = {"type": error or status, "message": ""}
    if not entries:  # the batch never got as far as a document: all its objects failed with its error
        summary.errors[execution_error["type"]] += objects
        return
    sink_failure: list[dict[str, str] | None] = []

    def failed_sink() -> dict[str, str] | None:
        if not sink_failure:  # one history read per batch, and only if a classified object needs it
            sink_failure.append(failed_delivery(target, execution_arn) if execution_arn else None)
        return sink_failure[0]

    for entry in entries:
        failed = object_error(entry, status == "SUCCEEDED", failed_sink, execution_error)
        if failed is None:
            summary.succeeded += 1
        else:
            summary.errors[failed["type"]] += 1


def backfill(
    target: Any,
    uri: str,
    *,
    batch_size: int | None = None,
    model: str | None = None,
    model_version: str | None = None,
    dry_run: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> Summary:
    bucket, prefix = parse_uri(uri)
    options = {k: v for k, v in (("model", model), ("model_version", model_version)) if v}
    state_input = backfill_input(target, bucket, prefix, batch_size, options)
    summary = Summary(bucket=bucket, prefix=prefix, dry_run=dry_run)
    started = time.monotonic()
    if target.endpoint_url is not None:
        _run_locally(target, state_input, summary, dry_run, on_progress)
    else:
        _run_on_aws(target, state_input, summary, dry_run, on_progress)
    summary.seconds = time.monotonic() - started
    return summary


def _definition_values(target: Any) -> dict[str, str]:
    r = target.resources
    return {
        "PipelineStateMachineArn": target.state_machine_arn,
        "OutputBucket": r.buckets["output"],
        "BackfillResultsPrefix": r.backfill.results_prefix,
    }


def _run_locally(
    target: Any, state_input: dict[str, Any], summary: Summary, dry_run: bool, on_progress: Callable[[str], None] | None
) -> None:
    from inferpipe.local.distributed_map import load_map_state, run_distributed_map

    state = load_map_state(
        target.resources.backfill.definition_path.read_text(encoding="utf-8"), _definition_values(target)
    )

    def progress(run: Any) -> None:
        if on_progress:
            done = len(run.results)
            failed = sum(1 for r in run.results if r.status != "SUCCEEDED")
            on_progress(f"batches {done}/{len(run.batches)} finished ({failed} with failures), {run.objects} objects")

    run = run_distributed_map(state, state_input, client=target.client, on_progress=progress, dry_run=dry_run)
    summary.objects = run.objects
    if dry_run:
        summary.batches = len(run.batches)
        summary.status = "DRY_RUN"
        return
    for result in run.results:
        _tally(summary, target, result.status, result.execution_arn, result.objects, result.error)
    summary.results = run.result_writer
    summary.status = run.status


def _run_on_aws(
    target: Any, state_input: dict[str, Any], summary: Summary, dry_run: bool, on_progress: Callable[[str], None] | None
) -> None:
    s3, sfn = target.client("s3"), target.client("stepfunctions")
    if dry_run:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=state_input["bucket"], Prefix=state_input["prefix"])
        summary.objects = sum(len(page.get("Contents", [])) for page in pages)
        summary.batches = -(-summary.objects // state_input["batch_size"])
        summary.status = "DRY_RUN"
        return
    machine = target.resources.arn("states", f"stateMachine:{target.resources.backfill.state_machine}")
    arn = sfn.start_execution(stateMachineArn=machine, input=json.dumps(state_input))["executionArn"]
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        if on_progress:
            for run in sfn.list_map_runs(executionArn=arn).get("mapRuns", []):
                counts = sfn.describe_map_run(mapRunArn=run["mapRunArn"])["itemCounts"]
                on_progress(f"objects {counts['succeeded'] + counts['failed']}/{counts['total']} in finished batches")
        time.sleep(5)
    summary.status = described["status"]
    for run in sfn.list_map_runs(executionArn=arn).get("mapRuns", []):
        summary.objects += sfn.describe_map_run(mapRunArn=run["mapRunArn"])["itemCounts"]["total"]
        for page in sfn.get_paginator("list_executions").paginate(mapRunArn=run["mapRunArn"]):
            for child in page["executions"]:
                output = json.loads(sfn.describe_execution(executionArn=child["executionArn"]).get("output") or "{}")
                child_input = json.loads(
                    sfn.describe_execution(executionArn=child["executionArn"]).get("input") or "{}"
                )
                objects = len(child_input.get("Items") or [])
                pipeline_arn = output.get("execution_arn") or _failed_execution_arn(output.get("cause"))
                _tally(
                    summary,
                    target,
                    str(output.get("status") or child["status"]),
                    pipeline_arn,
                    objects,
                    output.get("error"),
                )


def _failed_execution_arn(cause: Any) -> str | None:
    """A failed ``startExecution.sync:2`` task's Cause is the child execution's description, as JSON."""
    try:
        arn = json.loads(cause).get("ExecutionArn") if isinstance(cause, str) else None
    except (ValueError, AttributeError):
        return None
    return arn if isinstance(arn, str) else None


def format_summary(summary: Summary) -> str:
    data = summary.to_json()
    lines = [f"backfill of {data['source']}: {data['status']}"]
    if summary.dry_run:
        lines.append(f"  {summary.objects} objects in {summary.batches} batches (dry run: nothing started)")
        return "\n".join(lines)
    lines.append(
        f"  objects {summary.objects}   succeeded {summary.succeeded}   failed {summary.failed}   "
        f"executions {summary.executions}   {summary.seconds:.1f} s"
    )
    for error, count in summary.errors.most_common():
        lines.append(f"  failed {error}: {count}")
    if summary.results:
        lines.append(f"  results: s3://{summary.results['Bucket']}/{summary.results['Key']}")
    return "\n".join(lines)


__all__ = ["BackfillError", "Summary", "backfill", "backfill_input", "format_summary", "parse_uri"]
