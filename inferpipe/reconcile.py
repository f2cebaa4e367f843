"""``inferpipe reconcile``: does every sink hold exactly one current record per uploaded object version?

It compares the input bucket's object versions written within ``--since`` with what each sink
of the deployment holds, and with the failure records:

* **s3**: each version's record: the key's latest view ``predictions/<bucket>/<key>.json`` for the
  newest version with an outcome, ``predictions/_versions/<bucket>/<key>/<version>.json`` for the
  others (functions/sink/records.py);
* **dynamodb**: the version's item with ``status = SUCCEEDED``;
* **sns, sqs, eventbridge**: their messages cannot be read back without consuming them, so the
  delivery ledgers (``deliveries/<sink>/*.json``) say which record ids each sink published; a
  version counts when its current ``record_id`` (from its DynamoDB item or S3 record) is there.
  Ledgers expire after ``ledger_expiration_days`` (30): reconcile a window shorter than that.

Per sink:

==========  ====================================================================================
objects     object versions uploaded in the window (delete markers excluded)
records     of those, versions the sink holds a record of
missing     versions with neither a record in the sink nor a failure record: nothing says what
            became of them (an execution still running counts here: reconcile when idle)
duplicates  records beyond one per version: the same record id published in two ledgers
stale       keys whose latest view (prediction or failure) describes an older version than the
            key's newest version that has an outcome (s3 only; the other sinks keep no view)
failed      versions the sink holds no record of, whose outcome is a failure record (S3's or a
            FAILED item): they are accounted for, not missing
==========  ====================================================================================

Example::

    report = reconcile(target, since=timedelta(hours=24))
    print(format_report(report)); sys.exit(1 if report.problems else 0)
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from functions.sink import records
from functions.sink.core import FAILURE_PREFIX, LEDGER_PREFIX, MESSAGE_SINKS
from inferpipe.present import table

COLUMNS = ("objects", "records", "missing", "duplicates", "stale", "failed")
#: Columns that make the exit code 1.
PROBLEMS = ("missing", "duplicates", "stale")
MAX_EXAMPLES = 20


@dataclass(frozen=True)
class ObjectVersion:
    key: str
    version_id: str
    last_modified: datetime
    etag: str | None = None  # names the record of an upload to an unversioned bucket (functions/sink/records.py)


@dataclass
class Report:
    bucket: str
    since: datetime | None
    sinks: dict[str, dict[str, int]]
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {column: sum(row[column] for row in self.sinks.values()) for column in COLUMNS}

    @property
    def problems(self) -> int:
        return sum(self.totals[column] for column in PROBLEMS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "since": self.since.isoformat(timespec="seconds").replace("+00:00", "Z") if self.since else None,
            "sinks": self.sinks,
            "totals": self.totals,
            "examples": self.examples,
        }


def _pages(s3: Any, operation: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator(operation).paginate(**params):
        yield from page.get(key, [])


def input_versions(s3: Any, bucket: str, prefix: str, since: datetime | None) -> list[ObjectVersion]:
    """Every object version under ``prefix`` written at or after ``since``, newest first per key."""
    found = [
        ObjectVersion(
            v["Key"],
            v.get("VersionId") or records.NULL_VERSION,
            v["LastModified"],
            str(v.get("ETag") or "").strip('"') or None,
        )
        for v in _pages(s3, "list_object_versions", "Versions", Bucket=bucket, Prefix=prefix)
        if since is None or v["LastModified"] >= since
    ]
    # ListObjectVersions lists a key's versions newest first; keep that order, keys sorted
    order = {id(v): i for i, v in enumerate(found)}
    return sorted(found, key=lambda v: (v.key, order[id(v)]))


def _listed(s3: Any, bucket: str, prefixes: Iterable[str]) -> set[str]:
    return {
        o["Key"] for prefix in prefixes for o in _pages(s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix=prefix)
    }


def _json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _items(ddb: Any, table: str, bucket: str, keys: Iterable[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(key, version) -> the table's item, for every key."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key in keys:
        params = {
            "TableName": table,
            "KeyConditionExpression": "#o = :o",
            "ExpressionAttributeNames": {"#o": "object"},
            "ExpressionAttributeValues": {":o": {"S": f"s3://{bucket}/{key}"}},
        }
        for item in _pages(ddb, "query", "Items", **params):
            out[(key, item["version"]["S"])] = item
    return out


def _ledgers(s3: Any, bucket: str, sink: str) -> Counter[str]:
    """How many ledgers list each record id as delivered by ``sink``."""
    counted: Counter[str] = Counter()
    for key in _listed(s3, bucket, [f"{LEDGER_PREFIX}{sink}/"]):
        ledger = _json(s3, bucket, key) or {}
        counted.update(set(ledger.get("delivered") or []))
    return counted


class _Stored:
    """What the output bucket and the table hold for the input versions, read once."""

    def __init__(
        self,
        s3: Any,
        ddb: Any | None,
        *,
        input_bucket: str,
        output_bucket: str,
        output_prefix: str,
        table: str | None,
        keys: Sequence[str],
    ) -> None:
        self.s3, self.input_bucket, self.output_bucket = s3, input_bucket, output_bucket
        self.prefixes = {records.PREDICTION: output_prefix, records.FAILURE: FAILURE_PREFIX}
        self.history = {
            kind: _listed(
                s3,
                output_bucket,
                [
                    f"{p}{records.VERSIONS_FOLDER}/{input_bucket}/",
                    f"{p}{records.VERSIONS_FOLDER}/{records.LONG_FOLDER}/{input_bucket}/",
                ],
            )
            for kind, p in self.prefixes.items()
        }
        # The latest views, read once: each is the record of the version it stands for.
        self.views = {
            kind: {key: _json(s3, output_bucket, records.latest_key(p, input_bucket, key)) for key in keys}
            for kind, p in self.prefixes.items()
        }
        self.items = _items(ddb, table, input_bucket, keys) if ddb is not None and table else {}

    def record_of(self, kind: str, v: ObjectVersion) -> dict[str, Any] | str | None:
        """The version's record: the view's record when it is the view, the entry's key, or None."""
        prefix = self.prefixes[kind]
        entry = records.version_key(prefix, self.input_bucket, v.key, v.version_id, v.etag)
        view = self.views[kind][v.key]
        if view is not None and records.entry_of(prefix, self.input_bucket, v.key, view) == entry:
            return view
        return entry if entry in self.history[kind] else None

    def has(self, kind: str, v: ObjectVersion) -> bool:
        return self.record_of(kind, v) is not None

    def _item_status(self, v: ObjectVersion) -> str | None:
        item = self.items.get((v.key, v.version_id))
        return None if item is None else item.get("status", {}).get("S")

    def succeeded_item(self, v: ObjectVersion) -> dict[str, Any] | None:
        return self.items[(v.key, v.version_id)] if self._item_status(v) == "SUCCEEDED" else None

    def failed(self, v: ObjectVersion) -> bool:
        return self.has(records.FAILURE, v) or self._item_status(v) == "FAILED"

    def record_id(self, v: ObjectVersion) -> str | None:
        """The id of the version's prediction record (the table's, else the S3 record's), if it has one."""
        item = self.succeeded_item(v)
        if item is not None and "record_id" in item:
            return str(item["record_id"]["S"])
        where = self.record_of(records.PREDICTION, v)
        if where is None:
            return None
        stored = (_json(self.s3, self.output_bucket, where) if isinstance(where, str) else where) or {}
        return stored["record_id"] if isinstance(stored.get("record_id"), str) else None


class _Examples(list[dict[str, str]]):
    """The first MAX_EXAMPLES problems found, for the report."""

    def note(self, sink: str, problem: str, v: ObjectVersion | None, key: str, detail: str = "") -> None:
        if len(self) < MAX_EXAMPLES:
            self.append(
                {
                    "sink": sink,
                    "problem": problem,
                    "key": key,
                    "version_id": v.version_id if v else "",
                    **({"detail": detail} if detail else {}),
                }
            )


def reconcile(
    s3: Any,
    ddb: Any | None,
    *,
    input_bucket: str,
    input_prefix: str,
    output_bucket: str,
    output_prefix: str,
    table: str | None,
    sinks: Sequence[str],
    since: datetime | None,
) -> Report:
    versions = input_versions(s3, input_bucket, input_prefix, since)
    keys = sorted({v.key for v in versions})
    by_key: dict[str, list[ObjectVersion]] = defaultdict(list)
    for version in versions:
        by_key[version.key].append(version)
    stored = _Stored(
        s3,
        ddb,
        input_bucket=input_bucket,
        output_bucket=output_bucket,
        output_prefix=output_prefix,
        table=table,
        keys=keys,
    )
    record_ids: dict[ObjectVersion, str] = {}
    if any(sink in MESSAGE_SINKS for sink in sinks):
        record_ids = {v: rid for v in versions if (rid := stored.record_id(v)) is not None}
    examples = _Examples()
    report: dict[str, dict[str, int]] = {}
    for sink in sinks:
        ledger = _ledgers(s3, output_bucket, sink) if sink in MESSAGE_SINKS else Counter()
        row = _sink_row(sink, versions, stored, record_ids, ledger, examples)
        if sink == "s3":
            row["stale"] = _stale_keys(sink, by_key, stored, examples)
        report[sink] = row
    return Report(bucket=input_bucket, since=since, sinks=report, examples=list(examples))


def _sink_row(
    sink: str,
    versions: Sequence[ObjectVersion],
    stored: _Stored,
    record_ids: Mapping[ObjectVersion, str],
    ledger: Counter[str],
    examples: _Examples,
) -> dict[str, int]:
    """The sink's counts: objects, records, missing, duplicates, failed (stale is counted apart)."""
    row = dict.fromkeys(COLUMNS, 0)
    row["objects"] = len(versions)
    for v in versions:
        if sink == "s3":
            held = stored.has(records.PREDICTION, v)
        elif sink == "dynamodb":
            held = stored.succeeded_item(v) is not None
        else:
            rid = record_ids.get(v)
            delivered = ledger[rid] if rid is not None else 0
            held = delivered > 0
            if delivered > 1:
                row["duplicates"] += delivered - 1
                examples.note(sink, "duplicates", v, v.key, f"record {rid} in {delivered} ledgers")
        if held:
            row["records"] += 1
        elif stored.failed(v):
            row["failed"] += 1
        else:
            row["missing"] += 1
            examples.note(sink, "missing", v, v.key)
    return row


def _stale_keys(sink: str, by_key: Mapping[str, Sequence[ObjectVersion]], stored: _Stored, examples: _Examples) -> int:
    """How many keys' latest views do not describe their newest version with an outcome."""
    count = 0
    for key in sorted(by_key):
        stale = _stale({kind: stored.views[kind][key] for kind in stored.prefixes}, by_key[key], stored.has)
        if stale:
            count += 1
            examples.note(sink, "stale", None, key, stale)
    return count


def _stale(views: Mapping[str, dict[str, Any] | None], versions: Sequence[ObjectVersion], has: Any) -> str:
    """Why the key's latest views do not describe its newest version with an outcome ('' if they do)."""
    newest = next((v for v in versions if has(records.PREDICTION, v) or has(records.FAILURE, v)), None)
    if newest is None:
        return ""
    for kind, view in views.items():
        if view is None:
            if has(kind, newest) and not (kind == records.FAILURE and has(records.PREDICTION, newest)):
                return f"no latest {kind} view, though version {newest.version_id} has a {kind} record"
            continue
        described = (view.get("source") or {}).get("version_id") or records.NULL_VERSION
        if described != newest.version_id:
            return f"the latest {kind} view describes version {described}, not the newest with an outcome, {newest.version_id}"
    return ""


def format_report(report: Report) -> str:
    counts = [
        ("sink", *COLUMNS),
        *((sink, *(str(row[c]) for c in COLUMNS)) for sink, row in report.sinks.items()),
        ("total", *(str(report.totals[c]) for c in COLUMNS)),
    ]
    numbers = range(1, len(COLUMNS) + 1)
    lines = [table(counts, right=numbers, min_widths=[0, *(10 for _ in COLUMNS)], pad_last=True)]
    window = f"since {report.to_dict()['since']}" if report.since else "all versions"
    lines.append(
        f"s3://{report.bucket} ({window}): "
        + (
            "consistent"
            if not report.problems
            else f"{report.problems} problem(s): "
            + ", ".join(f"{report.totals[c]} {c}" for c in PROBLEMS if report.totals[c])
        )
    )
    for example in report.examples:
        lines.append(
            f"  {example['problem']}: {example['sink']} s3://{report.bucket}/{example['key']}"
            + (f"?versionId={example['version_id']}" if example["version_id"] else "")
            + (f" ({example['detail']})" if "detail" in example else "")
        )
    return "\n".join(lines)


def reconcile_target(target: Any, since: timedelta | None, *, prefix: str = "", now: datetime | None = None) -> Report:
    """What ``inferpipe reconcile`` runs: the deployment's buckets, table and sinks (keys under ``prefix``)."""
    res = target.resources
    cutoff = (now or datetime.now(UTC)) - since if since is not None else None
    sinks = tuple(res.defaults.sinks)
    return reconcile(
        target.client("s3"),
        target.client("dynamodb") if "dynamodb" in sinks or res.table else None,
        input_bucket=res.buckets["input"],
        input_prefix=prefix,
        output_bucket=res.buckets["output"],
        output_prefix=res.settings["OUTPUT_PREFIX"],
        table=res.table if "dynamodb" in sinks else None,
        sinks=sinks,
        since=cutoff,
    )


__all__ = ["COLUMNS", "PROBLEMS", "Report", "format_report", "input_versions", "reconcile", "reconcile_target"]
