"""``inferpipe cost``: what the work the local stack just did would cost on AWS, at list prices.

Usage is measured, never assumed:

* **Lambda**: requests and GB-seconds from every REPORT line the execution environments wrote
  (``Billed Duration`` × ``Memory Size``; init is billed, as for every function since 2025-08-01),
  the status recorder's invocation after each execution included;
* **Step Functions** (Standard): state transitions counted from each execution's history (every
  state entered, plus every retry of a task);
* **S3, DynamoDB, SNS, SQS, EventBridge**: the requests the pipeline's own roles made, counted at
  the stack's edge in billing units (:mod:`inferpipe.local.usage`); requests of clients (uploads,
  this CLI, tests) are not the pipeline's cost and are left out;
* **EventBridge S3 events**: one per object of each execution an S3 event started, directly or
  through the trigger's buffer queue (then also one SQS SendMessage each, by EventBridge);
* **Step Functions' status change events** (two per execution, the final one invokes the status
  recorder) are not priced: they are AWS service events, which every account receives without
  opting in, and the pricing page bills custom, partner and opt-in data events
  (https://aws.amazon.com/eventbridge/pricing/). Were they billed like S3's events ($1.00 per
  million, ``config/prices.json``), a million images in batches of one would cost $2.00 more;
* **EventBridge Pipes**: one request per 64 KB of each batch the pipe delivered;
* **CloudWatch Logs**: the bytes of the functions' log events (+ 26 bytes each, as AWS counts).

Prices are ``config/prices.json`` (us-east-1, each with its source and date; free tiers not
applied). "Images" are the objects the pipeline's executions in the window named (a batch of N
counts N), whatever the trigger.

Example::

    inferpipe cost --since 1h            # a table by service, the total, per image and per million
    inferpipe cost --since 10m --json    # {"images", "usd_total", "usd_per_million_images", "by_service", ...}
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from functions.common.batch import named_objects
from inferpipe.local.usage import CLIENT, USAGE_PATH
from inferpipe.paths import REPO_ROOT
from inferpipe.present import table

PRICES_FILE = REPO_ROOT / "config" / "prices.json"
#: CloudWatch Logs bills each event's message plus this much metadata.
LOG_EVENT_OVERHEAD_BYTES = 26
_REPORT = re.compile(r"^REPORT RequestId: \S+\tDuration: [\d.]+ ms\tBilled Duration: (\d+) ms\tMemory Size: (\d+) MB")
#: S3 operations by price class (https://aws.amazon.com/s3/pricing/: PUT, COPY, POST, LIST / GET, SELECT, HEAD; DELETE free).
S3_PUT_CLASS = frozenset(
    {"PutObject", "CopyObject", "ListObjects", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
)
S3_GET_CLASS = frozenset({"GetObject", "HeadObject"})
DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
DYNAMODB_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})


@dataclass(frozen=True)
class Price:
    key: str
    usd: float
    per: float
    unit: str
    source: str

    def of(self, quantity: float) -> float:
        return quantity * self.usd / self.per


def load_prices(path: Path = PRICES_FILE) -> dict[str, Price]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {
        key: Price(key, float(entry["usd"]), float(entry["per"]), str(entry["unit"]), str(entry["source"]))
        for key, entry in raw["prices"].items()
    }


@dataclass
class Usage:
    """What the pipeline did in a window (see the module docstring for where each figure comes from)."""

    since: float
    images: int = 0
    transitions: int = 0
    s3_events: int = 0
    #: S3 events the rule sent to the trigger's buffer queue (the batched trigger)
    queued_events: int = 0
    executions: int = 0
    lambda_requests: int = 0
    lambda_gb_seconds: float = 0.0
    #: the same GB-seconds by function (the key in config/stack.json), where they were measured
    lambda_gb_seconds_by_function: dict[str, float] = field(default_factory=dict)
    log_bytes: int = 0
    #: the pipeline roles' requests: {service: {operation: {"requests", "units"}}}
    requests: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def units(self, service: str, operations: frozenset[str] | None = None) -> int:
        return sum(
            entry["units"]
            for operation, entry in self.requests.get(service, {}).items()
            if operations is None or operation in operations
        )


@dataclass(frozen=True)
class Line:
    service: str
    item: str
    quantity: float
    price: Price

    @property
    def usd(self) -> float:
        return self.price.of(self.quantity)


@dataclass(frozen=True)
class Estimate:
    usage: Usage
    lines: tuple[Line, ...]

    @property
    def usd_total(self) -> float:
        return sum(line.usd for line in self.lines)

    @property
    def usd_per_image(self) -> float | None:
        return self.usd_total / self.usage.images if self.usage.images else None

    def by_service(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for line in self.lines:
            totals[line.service] = totals.get(line.service, 0.0) + line.usd
        return totals

    def to_json(self) -> dict[str, Any]:
        per_image = self.usd_per_image
        total = self.usd_total
        return {
            "since": datetime.fromtimestamp(self.usage.since, tz=UTC).isoformat(),
            "images": self.usage.images,
            "executions": self.usage.executions,
            "usd_total": total,
            "usd_per_image": per_image,
            "usd_per_million_images": None if per_image is None else per_image * 1_000_000,
            "by_service": self.by_service(),
            "orchestration_share": (self.by_service().get("Step Functions", 0.0) / total) if total else None,
            "lines": [
                {
                    "service": line.service,
                    "item": line.item,
                    "quantity": line.quantity,
                    "unit": line.price.unit,
                    "usd_per_unit": line.price.usd / line.price.per,
                    "usd": line.usd,
                    "price_source": line.price.source,
                }
                for line in self.lines
            ],
        }


def price(usage: Usage, prices: Mapping[str, Price] | None = None) -> Estimate:
    """The bill for ``usage``: one line per priced item, zero-quantity lines left out."""
    p = dict(prices or load_prices())
    candidates = [
        Line(
            "Step Functions", "state transitions (Standard)", usage.transitions, p["stepfunctions.standard_transitions"]
        ),
        Line("Lambda", "requests", usage.lambda_requests, p["lambda.requests"]),
        *(
            [
                Line("Lambda", f"GB-seconds ({name})", gb_s, p["lambda.gb_seconds"])
                for name, gb_s in sorted(usage.lambda_gb_seconds_by_function.items())
            ]
            if usage.lambda_gb_seconds_by_function
            else [Line("Lambda", "GB-seconds", usage.lambda_gb_seconds, p["lambda.gb_seconds"])]
        ),
        Line("S3", "PUT/COPY/POST/LIST requests", usage.units("s3", S3_PUT_CLASS), p["s3.put_requests"]),
        Line("S3", "GET/HEAD requests", usage.units("s3", S3_GET_CLASS), p["s3.get_requests"]),
        Line(
            "DynamoDB",
            "write request units",
            usage.units("dynamodb", DYNAMODB_WRITES),
            p["dynamodb.write_request_units"],
        ),
        Line(
            "DynamoDB", "read request units", usage.units("dynamodb", DYNAMODB_READS), p["dynamodb.read_request_units"]
        ),
        Line("SNS", "requests", usage.units("sns"), p["sns.requests"]),
        Line("SQS", "requests", usage.units("sqs"), p["sqs.requests"]),
        Line("SQS", "trigger buffer SendMessage (by EventBridge)", usage.queued_events, p["sqs.requests"]),
        Line("EventBridge Pipes", "requests (64 KB chunks of each batch)", usage.units("pipes"), p["pipes.requests"]),
        Line("EventBridge", "events put", usage.units("events", frozenset({"PutEvents"})), p["eventbridge.events"]),
        Line("EventBridge", "S3 events (trigger)", usage.s3_events, p["eventbridge.s3_events"]),
        Line("CloudWatch Logs", "GB ingested", usage.log_bytes / 2**30, p["logs.ingested_gb"]),
    ]
    return Estimate(usage, tuple(line for line in candidates if line.quantity))


def sagemaker_async(ms_per_image: float, prices: Mapping[str, Price] | None = None) -> dict[str, Any]:
    """The same work on SageMaker Asynchronous Inference, one ml.m5.xlarge kept busy.

    ``ms_per_image``: our measured forward time per image on 2 cores (the instance has 4 vCPU, so
    this overstates its instance time, in SageMaker's favour: no preprocess, no queueing, no idle
    time, no scale-to-zero cold starts are counted either). Per image it adds what the service
    needs in S3 anyway: the endpoint's GET of the input and its PUT of the output object, and the
    success notification on SNS; the invoker that calls InvokeEndpointAsync per upload is left out.
    """
    p = dict(prices or load_prices())
    instance = p["sagemaker.ml_m5_xlarge_hour"]
    per_image = {
        "instance time": instance.of(ms_per_image / 1000.0 / 3600.0),
        "S3 PUT of the output": p["s3.put_requests"].of(1),
        "S3 GET of the input": p["s3.get_requests"].of(1),
        "SNS success notification": p["sns.requests"].of(1),
    }
    return {
        "instance": "ml.m5.xlarge",
        "usd_per_hour": instance.usd,
        "ms_per_image": ms_per_image,
        "images_per_hour": 3_600_000.0 / ms_per_image,
        "usd_per_million_images": sum(per_image.values()) * 1_000_000,
        "by_item_per_million": {k: v * 1_000_000 for k, v in per_image.items()},
        "price_source": instance.source,
    }


# --------------------------------------------------------------------------------------------
# measuring the local stack
# --------------------------------------------------------------------------------------------


def _history_transitions(events: list[dict[str, Any]]) -> int:
    """State transitions an execution is billed for: every state entered, plus each task retry."""
    entered = sum(1 for e in events if e["type"].endswith("StateEntered"))
    task_entries = sum(1 for e in events if e["type"] == "TaskStateEntered")
    attempts = sum(1 for e in events if e["type"] in ("LambdaFunctionScheduled", "TaskScheduled"))
    return entered + max(0, attempts - task_entries)


def measure(target: Any, since: float) -> Usage:
    """The pipeline's usage on the local stack since ``since`` (seconds since the epoch).

    ``target``: a :class:`~inferpipe.local.stack.LocalStack`, or a :class:`~inferpipe.target.Target`
    at one (anything with ``endpoint_url``, ``client(service)``, ``resources``, ``state_machine_arn``).
    """
    if getattr(target, "endpoint_url", None) is None:
        raise ValueError("inferpipe cost prices the local stack's work; on AWS, read Cost Explorer or the CUR")
    usage = Usage(since=since)
    _add_requests(usage, target.endpoint_url, since)
    _add_lambda_logs(usage, target, since)
    _add_executions(usage, target, since)
    return usage


def _add_requests(usage: Usage, endpoint_url: str, since: float) -> None:
    """The AWS requests the stack served since ``since``, by service and operation (not this tool's own)."""
    with urllib.request.urlopen(f"{endpoint_url}{USAGE_PATH}?since={since}", timeout=30) as answer:
        by_caller = json.loads(answer.read())["usage"]
    for caller, services in by_caller.items():
        if caller == CLIENT:
            continue
        for service, operations in services.items():
            for operation, entry in operations.items():
                merged = usage.requests.setdefault(service, {}).setdefault(operation, {"requests": 0, "units": 0})
                merged["requests"] += entry["requests"]
                merged["units"] += entry["units"]


def _add_lambda_logs(usage: Usage, target: Any, since: float) -> None:
    """Log bytes ingested, and the invocations and GB-seconds of each function's REPORT lines."""
    logs = target.client("logs")
    for function, spec in target.resources.functions.items():
        request = {"logGroupName": f"/aws/lambda/{spec.name}", "startTime": int(since * 1000)}
        try:
            pages = list(logs.get_paginator("filter_log_events").paginate(**request))
        except logs.exceptions.ResourceNotFoundException:
            continue
        for message in (str(event["message"]) for page in pages for event in page["events"]):
            usage.log_bytes += len(message.encode("utf-8")) + LOG_EVENT_OVERHEAD_BYTES
            report = _REPORT.match(message)
            if report:
                usage.lambda_requests += 1
                gb_s = int(report.group(1)) / 1000 * int(report.group(2)) / 1024
                usage.lambda_gb_seconds += gb_s
                usage.lambda_gb_seconds_by_function[function] = (
                    usage.lambda_gb_seconds_by_function.get(function, 0.0) + gb_s
                )


def _add_executions(usage: Usage, target: Any, since: float) -> None:
    """State transitions, images and the S3 events that started the executions begun since ``since``."""
    sfn = target.client("stepfunctions")
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=target.state_machine_arn):
        for summary in page["executions"]:
            if summary["startDate"].timestamp() < since:
                continue
            history = [
                e
                for hp in sfn.get_paginator("get_execution_history").paginate(executionArn=summary["executionArn"])
                for e in hp["events"]
            ]
            usage.transitions += _history_transitions(history)
            _add_input(usage, _execution_input(history))


def _execution_input(history: list[dict[str, Any]]) -> Any:
    """The input the execution started with ({} when its history has no start, None when not JSON)."""
    started = next((e for e in history if e["type"] == "ExecutionStarted"), None)
    try:
        return json.loads(started["executionStartedEventDetails"].get("input") or "{}") if started else {}
    except ValueError:
        return None


def _add_input(usage: Usage, execution_input: Any) -> None:
    objects = len(named_objects(execution_input))
    usage.images += objects
    usage.executions += 1
    if isinstance(execution_input, list):
        # Queued (the batched trigger): each object was an S3 event the rule sent to the
        # buffer queue, one SendMessage each by EventBridge, which the stack does not see
        # as a request (moto delivers rule targets internally).
        usage.s3_events += objects
        usage.queued_events += objects
    elif isinstance(execution_input, dict) and execution_input.get("detail-type") == "Object Created":
        usage.s3_events += 1


def format_table(estimate: Estimate) -> str:
    """A plain table by line, then the totals."""
    rows = [("SERVICE", "ITEM", "QUANTITY", "USD PER UNIT", "USD")]
    for line in estimate.lines:
        whole = float(line.quantity).is_integer()
        quantity = (
            f"{int(line.quantity):,}"
            if whole
            else (f"{line.quantity:,.3f}" if line.quantity >= 1 else f"{line.quantity:.3g}")
        )
        rows.append(
            (
                line.service,
                line.item,
                quantity,
                f"{line.price.usd / line.price.per:.10f}".rstrip("0"),
                f"{line.usd:.8f}",
            )
        )
    text = table(rows, right=(2, 3, 4), pad_last=True).split("\n")
    summary = estimate.to_json()
    text.append("")
    text.append(
        f"images: {estimate.usage.images} in {estimate.usage.executions} executions    total: ${estimate.usd_total:.6f}"
    )
    if summary["usd_per_image"] is not None:
        text.append(
            f"per image: ${summary['usd_per_image']:.8f}    per million images: ${summary['usd_per_million_images']:,.2f}"
            f"    Step Functions share: {summary['orchestration_share']:.0%}"
        )
    text.append("prices: config/prices.json (us-east-1 list prices, no free tier; sources in the file)")
    return "\n".join(text)


def since_epoch(duration_s: float, now: float | None = None) -> float:
    return (time.time() if now is None else now) - duration_s


__all__ = [
    "PRICES_FILE",
    "Estimate",
    "Line",
    "Price",
    "Usage",
    "format_table",
    "load_prices",
    "measure",
    "price",
    "sagemaker_async",
    "since_epoch",
]
