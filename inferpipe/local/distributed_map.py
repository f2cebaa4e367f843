"""Bridge: the backfill's Distributed Map, run locally from ``state_machine/backfill.asl.json``.

moto's Step Functions interpreter has no ``ItemBatcher`` and does not run
``states:startExecution.sync:2``, so the local stack cannot execute the backfill state machine.
:func:`run_distributed_map` runs its one Map state the way Step Functions does
(https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html), reading every
setting from the same definition and the same input:

* ItemReader ``s3:listObjectsV2`` over ``Bucket``/``Prefix`` (all pages); ItemSelector applied to
  each listed object (``$`` the state input, ``$$.Map.Item.Value`` the object);
* ItemBatcher: ``MaxItemsPerBatchPath`` items a batch, with ``BatchInput``;
* the ItemProcessor's child: ``ShapeBatch`` then ``ClassifyBatch``, i.e. one execution of the
  pipeline state machine with ``{**options, "objects": [...]}``, waited for (``.sync:2``); a failed
  one is caught (``BatchFailed``), so it does not count against the tolerated failures;
* ``MaxConcurrencyPath`` children at once; ``ToleratedFailurePercentagePath`` of batches whose
  execution could not run at all (the Map then fails with ``States.ExceedToleratedFailureThreshold``);
* ResultWriter: the children's results under ``<Prefix><run name>/`` in the output bucket
  (``manifest.json``, ``SUCCEEDED_0.json``, ``FAILED_0.json``), as the service writes them.

Only the constructs backfill.asl.json uses are supported; anything else is an error, not a guess.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from inferpipe.stack.resources import render_template

READER = "arn:aws:states:::s3:listObjectsV2"
CHILD = "arn:aws:states:::states:startExecution.sync:2"
WRITER = "arn:aws:states:::s3:putObject"


class DistributedMapError(RuntimeError):
    pass


@dataclass
class ChildResult:
    batch: int
    objects: int
    status: str  # SUCCEEDED | FAILED (caught) | ERROR (could not run)
    execution_arn: str | None = None
    error: str | None = None
    cause: str | None = None
    output: Any = None


@dataclass
class MapRun:
    name: str
    objects: int
    batches: list[list[dict[str, Any]]]
    results: list[ChildResult] = field(default_factory=list)
    result_writer: dict[str, str] | None = None
    status: str = "RUNNING"
    error: str | None = None


def _path(value: Any, path: str) -> Any:
    if path == "$":
        return value
    if not path.startswith("$."):
        raise DistributedMapError(f"unsupported JSONPath {path!r}")
    for name in path[2:].split("."):
        if not isinstance(value, Mapping) or name not in value:
            raise DistributedMapError(f"{path} is not in the input")
        value = value[name]
    return value


def _select(template: Mapping[str, Any], state_input: Any, item: Any) -> dict[str, Any]:
    """ItemSelector / Parameters with ``.$`` keys: ``$...`` from the state input, ``$$.Map.Item.Value...`` from the item."""
    out: dict[str, Any] = {}
    for key, value in template.items():
        if key.endswith(".$"):
            if value.startswith("$$.Map.Item.Value"):
                out[key[:-2]] = _path(item, "$" + value[len("$$.Map.Item.Value") :])
            else:
                out[key[:-2]] = _path(state_input, value)
        elif isinstance(value, Mapping):
            out[key] = _select(value, state_input, item)
        else:
            out[key] = value
    return out


def load_map_state(definition_text: str, values: Mapping[str, str]) -> dict[str, Any]:
    """The one Map state of the backfill definition, placeholders filled, checked for what this bridge runs."""
    definition = json.loads(render_template(definition_text, values))
    state = definition["States"][definition["StartAt"]]
    problems = []
    if state.get("Type") != "Map" or (
        state.get("ItemProcessor", {}).get("ProcessorConfig", {}).get("Mode") != "DISTRIBUTED"
    ):
        problems.append("the start state is not a DISTRIBUTED Map")
    if state.get("ItemReader", {}).get("Resource") != READER:
        problems.append(f"ItemReader is not {READER}")
    if state.get("ResultWriter", {}).get("Resource") != WRITER:
        problems.append(f"ResultWriter is not {WRITER}")
    tasks = [s for s in state.get("ItemProcessor", {}).get("States", {}).values() if s.get("Type") == "Task"]
    if [t.get("Resource") for t in tasks] != [CHILD]:
        problems.append(f"the ItemProcessor must run exactly one {CHILD} task")
    if problems:
        raise DistributedMapError(
            "backfill.asl.json uses what the local Distributed Map does not run: " + "; ".join(problems)
        )
    return state


def run_distributed_map(
    state: Mapping[str, Any],
    state_input: Mapping[str, Any],
    *,
    client: Callable[[str], Any],
    on_progress: Callable[[MapRun], None] | None = None,
    poll_s: float = 0.25,
    dry_run: bool = False,
) -> MapRun:
    """Run the Map state over ``state_input`` against the local stack (``client(service)``)."""
    s3, sfn = client("s3"), client("stepfunctions")
    items = _read_items(s3, state, state_input)
    batcher = state["ItemBatcher"]
    size = int(_setting(state_input, batcher, "MaxItemsPerBatch"))
    if size < 1:
        raise DistributedMapError(f"MaxItemsPerBatch must be >= 1, got {size}")
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    run = MapRun(name=uuid.uuid4().hex, objects=len(items), batches=batches)
    if dry_run:
        run.status = "DRY_RUN"
        return run
    options = _select(batcher.get("BatchInput") or {}, state_input, None).get("options") or {}
    concurrency = int(_setting(state_input, state, "MaxConcurrency", 0)) or len(batches) or 1
    tolerated = float(_setting(state_input, state, "ToleratedFailurePercentage", 0))
    task = next(s for s in state["ItemProcessor"]["States"].values() if s.get("Type") == "Task")
    machine = task["Parameters"]["StateMachineArn"]

    def child(number: int) -> ChildResult:
        child_input = {**options, "objects": batches[number]}  # ShapeBatch + States.JsonMerge
        return _run_child(sfn, machine, f"{run.name[:16]}-{number}", number, child_input, poll_s)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, 40)), thread_name_prefix="backfill") as pool:
        for result in pool.map(child, range(len(batches))):
            run.results.append(result)
            if on_progress:
                on_progress(run)
    errors = sum(1 for r in run.results if r.status == "ERROR")
    run.result_writer = _write_results(s3, state["ResultWriter"]["Parameters"], run)
    if batches and errors * 100.0 / len(batches) > tolerated:
        run.status, run.error = "FAILED", "States.ExceedToleratedFailureThreshold"
    else:
        run.status = "SUCCEEDED"
    return run


_REQUIRED = object()


def _setting(state_input: Mapping[str, Any], holder: Mapping[str, Any], name: str, default: Any = _REQUIRED) -> Any:
    """A Map setting: from the input at ``<name>Path`` when the state has one, else ``<name>`` itself."""
    if f"{name}Path" in holder:
        return _path(state_input, holder[f"{name}Path"])
    return holder[name] if default is _REQUIRED else holder.get(name, default)


def _read_items(s3: Any, state: Mapping[str, Any], state_input: Mapping[str, Any]) -> list[Any]:
    """ItemReader: every object under the Bucket/Prefix (all pages), each through the ItemSelector."""
    reader = _select(state["ItemReader"]["Parameters"], state_input, None)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=reader["Bucket"], Prefix=reader.get("Prefix", ""))
    listed = [obj for page in pages for obj in page.get("Contents", [])]
    selector = state.get("ItemSelector")
    return [_select(selector or {}, state_input, obj) if selector else obj for obj in listed]


def _run_child(
    sfn: Any, machine: str, name: str, number: int, child_input: dict[str, Any], poll_s: float
) -> ChildResult:
    """One batch: an execution of the pipeline state machine, waited for (``.sync:2``)."""
    objects = len(child_input["objects"])
    try:
        arn = sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(child_input))["executionArn"]
    except Exception as exc:  # noqa: BLE001  (the child could not run: counts against the tolerated failures)
        return ChildResult(number, objects, "ERROR", error=type(exc).__name__, cause=str(exc))
    try:
        while True:
            described = sfn.describe_execution(executionArn=arn)
            if described["status"] != "RUNNING":
                break
            time.sleep(poll_s)
    except Exception as exc:  # noqa: BLE001  (the stack or the network failed while waiting: the outcome is unknown)
        from functions.common.aws import error_name

        return ChildResult(
            number,
            objects,
            "ERROR",
            arn,
            error=error_name(exc),
            cause=f"{exc} (while waiting for {arn}: the stack or the network failed)",
        )
    if described["status"] == "SUCCEEDED":
        return ChildResult(number, objects, "SUCCEEDED", arn, output=json.loads(described.get("output") or "null"))
    return ChildResult(
        number,
        objects,
        "FAILED",
        arn,
        error=described.get("error") or described["status"],
        cause=described.get("cause"),
    )


def _write_results(s3: Any, parameters: Mapping[str, Any], run: MapRun) -> dict[str, str]:
    bucket, prefix = parameters["Bucket"], f"{parameters.get('Prefix', '')}{run.name}/"
    by_status: dict[str, list[dict[str, Any]]] = {"SUCCEEDED": [], "FAILED": []}
    for r in run.results:
        status = "SUCCEEDED" if r.status != "ERROR" else "FAILED"
        by_status[status].append(
            {
                "ExecutionArn": r.execution_arn,
                "Status": status,
                "Output": json.dumps({"status": r.status, "error": r.error, "cause": r.cause, "output": r.output}),
            }
        )
    files = []
    for status, entries in by_status.items():
        key = f"{prefix}{status}_0.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(entries).encode(), ContentType="application/json")
        files.append({"Key": key, "Size": len(entries)})
    manifest = f"{prefix}manifest.json"
    s3.put_object(
        Bucket=bucket,
        Key=manifest,
        Body=json.dumps(
            {
                "DestinationBucket": bucket,
                "MapRunArn": run.name,
                "ResultFiles": {"SUCCEEDED": files[:1], "FAILED": files[1:]},
            }
        ).encode(),
    )
    return {"Bucket": bucket, "Key": manifest}


__all__ = ["ChildResult", "DistributedMapError", "MapRun", "load_map_state", "run_distributed_map"]
