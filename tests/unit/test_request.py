"""The request and job models accept what the state machine sends and name what is wrong otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from functions.common.errors import InvalidRequestError
from functions.common.request import MAX_TOP_K, REQUEST_KEYS, Job, ModelRef, Request, SourceObject, TensorRef

EVENTS = Path(__file__).resolve().parents[1] / "events"
SINKS = ["s3", "dynamodb", "sns", "sqs", "eventbridge"]
ODD_KEYS = [
    "holiday photos/café+1%.jpg",
    "a+b/c%2Fd%20e.png",  # looks URL-encoded; must not be decoded
    "日本語/写真 (1).jpeg",
    "  leading and trailing  ",
    "emoji 🐈‍⬛.webp",
    "x" * 1024,
]


_DROP = object()  # marks a field to leave out


def merged(**overrides: Any) -> dict[str, Any]:
    """The request as MergeRequest builds it: deployment defaults overlaid with the input."""
    base: dict[str, Any] = {
        "bucket": "inferpipe-input-123456789012-us-east-1",
        "key": "photos/cat.jpg",
        "sinks": list(SINKS),
        "top_k": 5,
        "model": "demo",
        "model_version": "prod",
        "trigger": "manual",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


def parse(**overrides: Any) -> Request:
    return Request.parse(merged(**overrides), SINKS)


def test_canned_events_parse() -> None:
    # GIVEN the canned preprocess inputs (S3 event with a version, manual without)
    s3_event = json.loads((EVENTS / "preprocess_s3_event.json").read_text(encoding="utf-8"))
    manual = json.loads((EVENTS / "preprocess_manual.json").read_text(encoding="utf-8"))

    # WHEN they are parsed
    from_event = Request.parse(s3_event["request"], s3_event["available_sinks"])
    from_manual = Request.parse(manual["request"], manual["available_sinks"])

    # THEN every field comes through, the key verbatim
    assert from_event.source == SourceObject(
        "inferpipe-input-123456789012-us-east-1",
        "incoming/holiday photos/café+1%.jpg",
        "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
    )
    assert from_event.trigger == "s3-event" and from_event.sinks == tuple(SINKS) and from_event.top_k == 5
    assert from_event.model == ModelRef("demo", "prod")
    assert from_manual.source.version_id is None and from_manual.sinks == ("s3",) and from_manual.top_k == 3


@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_are_kept_verbatim(key: str) -> None:
    request = parse(key=key)
    assert request.source.key == key
    # and survive the JSON trip between states
    job = Job(
        request.source,
        ModelRef("demo", "0123456789ab"),
        TensorRef("work-bucket", "tensors/x.npy", (1, 3, 8, 8)),
        request.sinks,
        3,
    )
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))).source.key == key


def test_unknown_keys_are_listed_with_the_accepted_ones() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Request.parse({**merged(), "topk": 3, "Bucket": "x"}, SINKS)
    message = str(caught.value)
    assert "['Bucket', 'topk']" in message
    for accepted in REQUEST_KEYS:
        assert accepted in message


@pytest.mark.parametrize("missing", ["bucket", "key", "sinks", "top_k", "model", "model_version"])
def test_missing_field_is_named(missing: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"missing {missing}"):
        parse(**{missing: _DROP})


@pytest.mark.parametrize(
    "bucket",
    ["ab", "My-Bucket", "bucket_name", "-bucket", "bucket-", "a..b", "192.168.5.4", "x" * 64, "", 7, None],
)
def test_invalid_bucket_is_rejected(bucket: Any) -> None:
    with pytest.raises(InvalidRequestError, match="bucket"):
        parse(bucket=bucket)


@pytest.mark.parametrize(
    "bucket", ["abc", "my.bucket.name", "inferpipe-input-123456789012-us-east-1", "my-ap-abcdefgh-s3alias"]
)
def test_valid_bucket_is_accepted(bucket: str) -> None:
    assert parse(bucket=bucket).source.bucket == bucket


@pytest.mark.parametrize("key", ["", "é" * 513, "\ud800", 12, None])
def test_invalid_key_is_rejected(key: Any) -> None:
    with pytest.raises(InvalidRequestError, match="key"):
        parse(key=key)


def test_key_limit_counts_utf8_bytes() -> None:
    assert parse(key="é" * 512).source.key == "é" * 512  # 1024 bytes: the maximum
    with pytest.raises(InvalidRequestError, match="1026 UTF-8 bytes"):
        parse(key="é" * 513)


def test_version_id_is_optional() -> None:
    assert parse(version_id=None).source.version_id is None
    assert parse().source.version_id is None
    assert parse(version_id="null").source.version_id == "null"  # S3's id for pre-versioning objects
    for bad in ("", 3, ["v1"]):
        with pytest.raises(InvalidRequestError, match="version_id"):
            parse(version_id=bad)


def test_unknown_sink_names_the_sink_and_lists_the_available() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Request.parse(merged(sinks=["s3", "kafka"]), ["s3", "sqs"])
    assert "'kafka'" in str(caught.value) and "['s3', 'sqs']" in str(caught.value)


@pytest.mark.parametrize("sinks", [[], "s3", ["s3", "s3"], [1], None])
def test_bad_sink_lists_are_rejected(sinks: Any) -> None:
    with pytest.raises(InvalidRequestError, match="sink"):
        parse(sinks=sinks)


@pytest.mark.parametrize("top_k", [0, -1, MAX_TOP_K + 1, "5", 5.0, True, None])
def test_bad_top_k_is_rejected(top_k: Any) -> None:
    with pytest.raises(InvalidRequestError, match="top_k"):
        parse(top_k=top_k)


@pytest.mark.parametrize("top_k", [1, MAX_TOP_K])
def test_top_k_bounds_are_inclusive(top_k: int) -> None:
    assert parse(top_k=top_k).top_k == top_k


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "../etc"),
        ("model", "a/b"),
        ("model", ""),
        ("model", 3),
        ("model_version", ".hidden"),
        ("model_version", "v 1"),
        ("model_version", "x" * 65),
    ],
)
def test_unsafe_model_names_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        parse(**{field: value})


def test_trigger_must_be_known() -> None:
    assert parse(trigger=_DROP).trigger == "manual"
    with pytest.raises(InvalidRequestError, match="trigger"):
        parse(trigger="cron")


def test_request_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError, match="JSON object"):
        Request.parse(["bucket"], SINKS)  # type: ignore[arg-type]  # deliberately no Mapping: the runtime check is the test


def _job() -> Job:
    return Job(
        source=SourceObject("in-bucket", "a b+c%.jpg", "v1", "9dd4e461268c8034f5c8564e155c67a6", 1234),
        model=ModelRef("demo", "0123456789ab"),
        tensor=TensorRef("work-bucket", "tensors/abc.npy", (1, 3, 64, 64)),
        sinks=("s3", "sqs"),
        top_k=3,
        timings_ms={"fetch": 12.5, "total": 40.0},
    )


def test_job_has_exactly_the_documented_shape() -> None:
    data = _job().to_dict()
    assert data == {
        "source": {
            "bucket": "in-bucket",
            "key": "a b+c%.jpg",
            "version_id": "v1",
            "etag": "9dd4e461268c8034f5c8564e155c67a6",
            "size": 1234,
            "last_modified": None,
            "sequencer": None,
        },
        "model": {"name": "demo", "version": "0123456789ab"},
        "tensor": {"bucket": "work-bucket", "key": "tensors/abc.npy", "shape": [1, 3, 64, 64], "dtype": "float32"},
        "sinks": ["s3", "sqs"],
        "top_k": 3,
        "timings_ms": {"fetch": 12.5, "total": 40.0},
    }
    assert Job.from_dict(json.loads(json.dumps(data))) == _job()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("tensor", "shape"), [3, 64, 64], "tensor.shape"),
        (("tensor", "shape"), [1, 1, 64, 64], "tensor.shape"),
        (("tensor", "dtype"), "float64", "tensor.dtype"),
        (("source", "size"), -1, "source.size"),
        (("model", "version"), "a/b", "model.version"),
        (("sinks",), [], "job.sinks"),
        (("top_k",), 0, "top_k"),
    ],
)
def test_malformed_job_names_the_field(path: tuple[str, ...], value: Any, message: str) -> None:
    data = _job().to_dict()
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(InvalidRequestError, match=message):
        Job.from_dict(data)


def test_job_missing_tensor_is_named() -> None:
    data = _job().to_dict()
    del data["tensor"]
    with pytest.raises(InvalidRequestError, match="job is missing tensor"):
        Job.from_dict(data)


def test_located_source_pins_version_etag_and_size() -> None:
    located = SourceObject("in-bucket", "k").located("v9", "etag", 10)
    assert (located.version_id, located.etag, located.size) == ("v9", "etag", 10)
    assert located.uri == "s3://in-bucket/k?versionId=v9"
    # an unversioned bucket reports no version: keep what was asked for (None here)
    assert SourceObject("in-bucket", "k").located(None, "e", 1).version_id is None


def test_every_problem_is_reported_at_once() -> None:
    # GIVEN a manual request with several mistakes (as an operator might type it)
    data = {
        "bucket": "x",
        "key": "k",
        "top_k": 0,
        "sinks": ["kafka"],
        "model": "demo",
        "model_version": "prod",
        "colour": "blue",
    }

    # WHEN it is parsed
    with pytest.raises(InvalidRequestError) as caught:
        Request.parse(data, SINKS)

    # THEN one error names each of them
    message = str(caught.value)
    for culprit in ("'colour'", "bucket='x'", "top_k=0", "'kafka'"):
        assert culprit in message


def test_uploader_metadata_sets_options_of_an_s3_triggered_run() -> None:
    # GIVEN an S3-triggered request (deployment defaults) and the object's user metadata
    request = parse(trigger="s3-event")
    metadata = {"inferpipe-top-k": "3", "Inferpipe-Model": "other", "inferpipe-model-version": "0123456789ab"}

    # WHEN the options are applied
    chosen = request.with_object_options(metadata)

    # THEN they override the defaults; the object and the sinks stay
    assert chosen.top_k == 3 and chosen.model == ModelRef("other", "0123456789ab")
    assert chosen.source == request.source and chosen.sinks == request.sinks
    assert request.with_object_options({}) == request
    assert request.with_object_options({"unrelated": "x"}) == request


def test_manual_requests_ignore_object_metadata() -> None:
    request = parse(trigger="manual", top_k=2)
    assert request.with_object_options({"inferpipe-top-k": "9", "inferpipe-model": "other"}) == request


@pytest.mark.parametrize(
    ("metadata", "culprit"),
    [
        ({"inferpipe-top-k": "many"}, "inferpipe-top-k"),
        ({"inferpipe-top-k": "0"}, "inferpipe-top-k"),
        ({"inferpipe-top-k": "³"}, "inferpipe-top-k"),
        ({"inferpipe-top-k": str(MAX_TOP_K + 1)}, "inferpipe-top-k"),
        ({"inferpipe-model": "../x"}, "inferpipe-model"),
        ({"inferpipe-model-version": "a/b"}, "inferpipe-model-version"),
    ],
)
def test_bad_object_metadata_is_named(metadata: dict[str, str], culprit: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"object metadata {culprit}"):
        parse(trigger="s3-event").with_object_options(metadata)
