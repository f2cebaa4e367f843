"""Every input the state machine accepts becomes the right batch of objects; a bad object fails alone."""

from __future__ import annotations

import re
from typing import Any

import pytest

from functions.common.batch import MAX_BATCH_OBJECTS, Batch, Defaults, named_objects, parse_input
from functions.common.config import invocation_environment
from functions.common.errors import InvalidInputError, InvalidRequestError, PermanentError
from tests.conftest import s3_object_created, sqs_record

BUCKET = "inferpipe-input-123456789012-us-east-1"
SINKS = ("s3", "dynamodb", "sns", "sqs", "eventbridge")
DEFAULTS = Defaults(sinks=SINKS, top_k=5, model="demo", model_version="prod")


def s3_event(key: str, version_id: str | None = "v1", bucket: str = BUCKET) -> dict[str, Any]:
    """An S3 'Object Created' event as EventBridge delivers it."""
    return s3_object_created(key, version_id, bucket)


def objects(batch: Batch) -> list[tuple[str, str, str | None]]:
    return [(i.source.bucket, i.source.key, i.source.version_id) for i in batch.items if i.source is not None]


# --------------------------------------------------------------------------- every shape


def test_an_eventbridge_s3_event_is_a_batch_of_one_with_the_deployment_defaults() -> None:
    # WHEN the direct trigger's event is parsed
    batch = parse_input(s3_event("incoming/holiday photos/café+1%.jpg", "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"), DEFAULTS)
    # THEN it names that object version, verbatim, with the defaults, as an S3-triggered run
    assert batch.trigger == "s3-event" and batch.duplicates == 0
    assert objects(batch) == [(BUCKET, "incoming/holiday photos/café+1%.jpg", "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e")]
    (item,) = batch.items
    assert item.problem is None and item.request is not None
    assert (item.request.sinks, item.request.top_k, item.request.trigger) == (SINKS, 5, "s3-event")
    assert (item.request.model.name, item.request.model.version) == ("demo", "prod")
    assert batch.sinks == SINKS


def test_an_event_of_an_unversioned_bucket_names_no_version() -> None:
    assert objects(parse_input(s3_event("photos/cat.jpg", version_id=None), DEFAULTS)) == [
        (BUCKET, "photos/cat.jpg", None)
    ]


def test_a_manual_request_overrides_the_defaults_it_names() -> None:
    raw = {
        "bucket": BUCKET,
        "key": "photos/cat.jpg",
        "version_id": "v7",
        "sinks": ["s3"],
        "top_k": 3,
        "model_version": "abcdef012345",
    }
    batch = parse_input(raw, DEFAULTS)
    assert batch.trigger == "manual" and objects(batch) == [(BUCKET, "photos/cat.jpg", "v7")]
    request = batch.items[0].request
    assert request is not None
    assert (request.sinks, request.top_k, request.model.name, request.model.version, request.trigger) == (
        ("s3",),
        3,
        "demo",
        "abcdef012345",
        "manual",
    )
    assert batch.sinks == ("s3",)


def test_a_manual_batch_keeps_its_order_and_shares_its_options() -> None:
    raw = {
        "objects": [
            {"bucket": BUCKET, "key": "a.jpg"},
            {"bucket": BUCKET, "key": "b.png", "version_id": "v2"},
            {"bucket": "other-bucket", "key": "c.gif"},
        ],
        "top_k": 2,
        "sinks": ["s3", "sqs"],
    }
    batch = parse_input(raw, DEFAULTS)
    assert batch.trigger == "manual"
    assert objects(batch) == [(BUCKET, "a.jpg", None), (BUCKET, "b.png", "v2"), ("other-bucket", "c.gif", None)]
    assert [i.index for i in batch.items] == [0, 1, 2]
    assert all(
        i.request is not None
        and (i.request.top_k, i.request.sinks, i.request.model.version) == (2, ("s3", "sqs"), "prod")
        for i in batch.items
    )


def test_sqs_records_whose_body_is_the_s3_event_are_the_objects_of_one_batch() -> None:
    # GIVEN three SQS messages of S3 events, as EventBridge Pipes delivers them (body: a JSON string)
    raw = [sqs_record(s3_event(f"uploads/{n}.jpg", f"v{n}"), n) for n in range(3)]
    # WHEN parsed
    batch = parse_input(raw, DEFAULTS)
    # THEN each message is one object, as if its upload had triggered the pipeline itself
    assert batch.trigger == "queue"
    assert objects(batch) == [(BUCKET, f"uploads/{n}.jpg", f"v{n}") for n in range(3)]
    assert all(i.request is not None and i.request.trigger == "s3-event" and i.request.top_k == 5 for i in batch.items)


def test_records_reshaped_by_the_pipe_and_bare_s3_events_are_accepted_too() -> None:
    reshaped = [
        {"bucket": BUCKET, "key": "a.jpg", "version_id": "v1"},
        {"bucket": BUCKET, "key": "b.jpg", "version_id": None},
    ]
    assert objects(parse_input(reshaped, DEFAULTS)) == [(BUCKET, "a.jpg", "v1"), (BUCKET, "b.jpg", None)]
    bare = [s3_event("c.jpg", "v3"), s3_event("d.jpg", None)]
    assert objects(parse_input(bare, DEFAULTS)) == [(BUCKET, "c.jpg", "v3"), (BUCKET, "d.jpg", None)]
    # an SQS record whose body is already an object (not a JSON string) is read the same way
    record = {**sqs_record(s3_event("e.jpg", "v5")), "body": s3_event("e.jpg", "v5")}
    assert objects(parse_input([record], DEFAULTS)) == [(BUCKET, "e.jpg", "v5")]


# --------------------------------------------------------------------------- duplicates


def test_the_same_object_version_named_twice_is_classified_once() -> None:
    # GIVEN a queue that delivered the same upload's event twice, beside another version of the key
    raw = [
        sqs_record(s3_event("a.jpg", "v1"), 0),
        sqs_record(s3_event("b.jpg", "v1"), 1),
        sqs_record(s3_event("a.jpg", "v1"), 2),
        sqs_record(s3_event("a.jpg", "v2"), 3),
    ]
    batch = parse_input(raw, DEFAULTS)
    # THEN the repeat is dropped (and counted); another version of the same key is not a repeat
    assert objects(batch) == [(BUCKET, "a.jpg", "v1"), (BUCKET, "b.jpg", "v1"), (BUCKET, "a.jpg", "v2")]
    assert batch.duplicates == 1
    assert [i.index for i in batch.items] == [0, 1, 3]


def test_a_manual_batch_naming_an_object_twice_keeps_the_first() -> None:
    raw = {
        "objects": [
            {"bucket": BUCKET, "key": "a.jpg"},
            {"bucket": BUCKET, "key": "a.jpg"},
            {"bucket": BUCKET, "key": "a.jpg", "version_id": "v1"},
        ]
    }
    batch = parse_input(raw, DEFAULTS)
    assert objects(batch) == [(BUCKET, "a.jpg", None), (BUCKET, "a.jpg", "v1")] and batch.duplicates == 1


# --------------------------------------------------------------------------- a bad object fails alone


def test_a_bad_object_fails_alone_with_a_message_naming_the_problem() -> None:
    # GIVEN a manual batch with an empty key, a bucket name S3 would refuse and an object with a stray option
    raw = {
        "objects": [
            {"bucket": BUCKET, "key": "good.jpg"},
            {"bucket": BUCKET, "key": ""},
            {"bucket": "Not_A_Bucket", "key": "x.jpg"},
            {"bucket": BUCKET, "key": "y.jpg", "top_k": 3},
            "z.jpg",
        ]
    }
    # WHEN parsed
    batch = parse_input(raw, DEFAULTS)
    # THEN every object is there, the good one ready and each bad one with its own reason
    assert len(batch.items) == 5
    good, empty, bad_bucket, stray, string = batch.items
    assert good.problem is None and good.request is not None
    assert empty.request is None and empty.problem == "key must be a non-empty string, got ''"
    assert bad_bucket.request is None and "bucket='Not_A_Bucket' is not a valid S3 bucket name" in (
        bad_bucket.problem or ""
    )
    assert stray.request is None and "objects[3] must be {bucket, key, version_id?}" in (stray.problem or "")
    assert string.request is None and "objects[4] must be {bucket, key, version_id?}, got 'z.jpg'" in (
        string.problem or ""
    )
    # AND a failure record can still name an object whose names are valid, never one whose names are not
    assert stray.named_source() == {"bucket": BUCKET, "key": "y.jpg", "version_id": None}
    assert empty.named_source() is None and bad_bucket.named_source() is None and string.named_source() is None
    # AND the batch's sinks are those of its valid objects
    assert batch.sinks == SINKS


def test_a_queued_message_that_is_not_an_s3_event_fails_alone() -> None:
    raw = [
        sqs_record(s3_event("a.jpg"), 0),
        sqs_record({"Service": "Amazon S3", "Event": "s3:TestEvent"}, 1),
        sqs_record("not json{", 2),
    ]
    batch = parse_input(raw, DEFAULTS)
    assert objects(batch) == [(BUCKET, "a.jpg", "v1")]
    assert [i.problem is None for i in batch.items] == [True, False, False]
    first, second = batch.items[1].problem, batch.items[2].problem
    assert first is not None and second is not None
    assert first.startswith("element 1 of the batch is not an SQS record of an S3 event")
    assert second.startswith("element 2 of the batch")


def test_a_manual_request_with_bad_options_is_an_object_that_fails_not_a_rejected_input() -> None:
    batch = parse_input({"bucket": BUCKET, "key": "photos/cat.jpg", "sinks": ["s3", "kafka"], "top_k": 0}, DEFAULTS)
    (item,) = batch.items
    assert item.request is None
    assert "unknown sink 'kafka'" in (item.problem or "") and "top_k=0 must be between 1 and 100" in (
        item.problem or ""
    )
    assert item.named_source() == {"bucket": BUCKET, "key": "photos/cat.jpg", "version_id": None}


# --------------------------------------------------------------------------- rejected whole


def test_more_than_the_maximum_objects_is_rejected_whole() -> None:
    many = {"objects": [{"bucket": BUCKET, "key": f"{n}.jpg"} for n in range(MAX_BATCH_OBJECTS + 1)]}
    with pytest.raises(
        InvalidInputError, match=r"names 101 objects; one execution classifies at most 100 \(MAX_BATCH_OBJECTS\)"
    ):
        parse_input(many, DEFAULTS)
    with pytest.raises(InvalidInputError, match="at most 100"):
        parse_input([{"bucket": BUCKET, "key": f"{n}.jpg"} for n in range(101)], DEFAULTS)
    # exactly the maximum is one batch
    assert len(parse_input({"objects": many["objects"][:MAX_BATCH_OBJECTS]}, DEFAULTS).items) == MAX_BATCH_OBJECTS


def test_the_deployment_setting_lowers_the_maximum() -> None:
    raw = {"objects": [{"bucket": BUCKET, "key": f"{n}.jpg"} for n in range(4)]}
    with invocation_environment({"MAX_BATCH_OBJECTS": "3"}):
        with pytest.raises(InvalidInputError, match="at most 3"):
            parse_input(raw, DEFAULTS)
        assert len(parse_input({"objects": raw["objects"][:3]}, DEFAULTS).items) == 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["not", "an", "event"], "none of its 3 elements is an SQS record of an S3 event"),
        ([], "empty array"),
        ({}, "no object to classify"),
        ({"hello": "world"}, "no object to classify"),
        ("s3://bucket/key.jpg", "the input is 's3://bucket/key.jpg'"),
        (None, "the input is None"),
        ({"objects": []}, "objects must be a non-empty array"),
        ({"objects": "a.jpg"}, "objects must be a non-empty array"),
        ({"objects": [{"bucket": BUCKET, "key": "a.jpg"}], "priority": "high"}, "unknown keys ['priority']"),
    ],
)
def test_an_input_naming_no_object_is_rejected_with_invalid_input_error(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_input(raw, DEFAULTS)
    assert message in str(caught.value)
    assert "Expected an S3 'Object Created' event" in str(caught.value)  # and says what would do
    assert isinstance(caught.value, PermanentError)  # caught by the state machine, never retried


# --------------------------------------------------------------------------- defaults, names


def test_defaults_accept_the_asl_placeholders_as_strings() -> None:
    defaults = Defaults.from_dict({"sinks": "s3, dynamodb,", "top_k": "5", "model": "demo", "model_version": "prod"})
    assert defaults == Defaults(sinks=("s3", "dynamodb"), top_k=5, model="demo", model_version="prod")
    assert Defaults.from_dict({"sinks": ["sqs"], "top_k": 2, "model": "m", "model_version": "v"}).top_k == 2
    with pytest.raises(InvalidRequestError, match=re.escape("defaults.top_k must be an integer, got 'five'")):
        Defaults.from_dict({"sinks": "s3", "top_k": "five", "model": "demo", "model_version": "prod"})
    with pytest.raises(InvalidRequestError, match=re.escape("defaults.sinks must name at least one sink")):
        Defaults.from_dict({"sinks": " , ", "top_k": "5", "model": "demo", "model_version": "prod"})
    with pytest.raises(InvalidRequestError, match="defaults must be an object"):
        Defaults.from_dict(None)


def test_named_objects_lists_what_any_input_was_about() -> None:
    event = s3_event("a.jpg", "v1")
    assert named_objects(event) == [
        {"bucket": BUCKET, "key": "a.jpg", "version_id": "v1", "sequencer": event["detail"]["object"]["sequencer"]}
    ]
    assert named_objects([sqs_record(s3_event("b.jpg", None))]) == [
        {"bucket": BUCKET, "key": "b.jpg", "version_id": None, "sequencer": event["detail"]["object"]["sequencer"]}
    ]
    # leniently: an object with options this deployment would refuse is still named, an invalid name is not
    assert named_objects(
        {"objects": [{"bucket": BUCKET, "key": "c.jpg"}, {"bucket": BUCKET, "key": ""}], "sinks": ["kafka"]}
    ) == [{"bucket": BUCKET, "key": "c.jpg", "version_id": None}]
    assert named_objects(["not", "an", "event"]) == [] and named_objects({"hello": "world"}) == []


def test_a_captured_eventbridge_event_names_its_key_raw_as_stored() -> None:
    # GIVEN an S3 event as EventBridge really delivered it (tests/events/, cited there): its key has
    # ':' characters, which classic S3 notifications would have sent as '%3A'
    import json
    from pathlib import Path

    event = json.loads(
        (Path(__file__).parents[1] / "events" / "s3_eventbridge_object_created_captured.json").read_text()
    )
    # WHEN parsed as the pipeline's input
    (item,) = parse_input(event, DEFAULTS).items
    # THEN the object is exactly the stored key (never URL-decoded: '%2B' or '+' in a key stay what they are),
    # pinned to the event's version, with the event's sequencer (what orders it against the key's other versions)
    assert item.request is not None and item.problem is None
    source = item.request.source
    assert (source.bucket, source.key) == ("mxcd-magic-star-691-in", "raw/health-check/2023-08-08T14:03:40.532432.zip")
    assert source.version_id == "uhggCJ2_B6gU2JaXWXebnXFDstO0ID6G" and item.sequencer == "0064D3901D00059242"
