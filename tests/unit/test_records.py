"""Record paths that are safe and never shared, and latest views that never go back to an older version."""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from functions.sink import records
from functions.sink.records import (
    FAILURE,
    PREDICTION,
    Version,
    compare,
    decode_key,
    encode_key,
    latest_key,
    version_key,
)

PREFIXES = {PREDICTION: "predictions/", FAILURE: "failures/"}
BUCKET = "out-bucket"

HOSTILE_KEYS = [
    "photos/cat.jpg",
    "hostile/../photos/cat.jpg",
    "../../etc/passwd",
    "./photos/cat.jpg",
    "a/./b",
    "..",
    ".",
    "a//b",
    "a/b",
    "/a",
    "a/",
    "//",
    "a\x00b",
    "a\nb",
    "tab\there",
    "del\x7f",
    "c1\x85next\x9f",
    "back\\slash",
    "100%.jpg",
    "100%25.jpg",
    "%2E%2E/x",
    "café+1 (copy).jpg",
    "photos/cat.jpg/v1",
]


def test_ordinary_keys_keep_their_name() -> None:
    assert latest_key("predictions/", "in", "photos/2026/cat 1.jpg") == "predictions/in/photos/2026/cat 1.jpg.json"
    assert (
        version_key("failures/", "in", "photos/cat.jpg", "3HL4kqtJ")
        == "failures/_versions/in/photos/cat.jpg/3HL4kqtJ.json"
    )
    assert version_key("failures/", "in", "photos/cat.jpg", None) == "failures/_versions/in/photos/cat.jpg/null.json"


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_a_record_path_is_safe_to_sync_and_decodes_to_its_key(key: str) -> None:
    path = encode_key(key)
    assert decode_key(path) == key
    segments = path.split("/")
    assert all(segment not in ("", ".", "..") for segment in segments), path
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch == "\\" for ch in path), path
    # a tool that writes the record under a local folder (aws s3 cp --recursive) stays in that folder
    local = posixpath.join("/sync/failures/in", path + ".json")
    assert posixpath.normpath(local) == local and local.startswith("/sync/failures/in/")


def test_no_two_keys_share_a_record() -> None:
    latest = {latest_key("failures/", "in", key) for key in HOSTILE_KEYS}
    assert len(latest) == len(HOSTILE_KEYS)
    # the example of the issue: a key with ../ segments does not land on the key it names
    assert (
        latest_key("failures/", "in", "hostile/../photos/cat.jpg") == "failures/in/hostile/%2E%2E/photos/cat.jpg.json"
    )
    assert latest_key("failures/", "in", "hostile/../photos/cat.jpg") != latest_key("failures/", "in", "photos/cat.jpg")
    # nor does a version record of one key collide with another key's records
    versions = {
        version_key("predictions/", "in", key, version) for key in HOSTILE_KEYS for version in ("v1", "v/2", None)
    }
    assert len(versions) == 3 * len(HOSTILE_KEYS)
    assert not versions & {latest_key("predictions/", "in", key) for key in HOSTILE_KEYS}


def test_a_key_too_long_once_prefixed_is_named_by_its_hash_within_s3s_limit() -> None:
    key = "deep/" + "x" * 1010
    latest, version = latest_key("predictions/", "in", key), version_key("predictions/", "in", key, "v" * 32)
    assert latest.startswith("predictions/_long/in/") and version.startswith("predictions/_versions/_long/in/")
    assert len(latest.encode()) <= 1024 and len(version.encode()) <= 1024
    assert latest != latest_key("predictions/", "in", key + "y")


# --------------------------------------------------------------------------- order


def test_sequencers_order_versions_after_right_padding() -> None:
    # S3's sequencers for one key grow; values of different lengths are right-padded with zeros
    older, newer = Version("v1", "0055AED6DCD90281E5"), Version("v2", "0055AED6DCD90281E6")
    assert compare(newer, older) == 1 and compare(older, newer) == -1
    assert compare(Version("v2", "0A"), Version("v1", "09FF")) == 1  # "0A00" > "09FF"
    assert compare(Version("v1", "0a"), Version("v1", "0A")) == 0


def test_last_modified_orders_versions_without_two_sequencers_and_a_tie_is_not_ordered() -> None:
    manual = Version("v2", None, "2026-12-03T10:00:02.000Z")
    evented = Version("v1", "0055AED6DCD90281E5", "2026-12-03T10:00:01.000Z")
    assert compare(manual, evented) == 1 and compare(evented, manual) == -1
    assert compare(Version("v1"), Version("v1", "0B")) == 0  # the same version, however it is named
    assert (
        compare(Version("v2", None, "2026-12-03T10:00:01.000Z"), Version("v1", None, "2026-12-03T10:00:01.000Z"))
        is None
    )
    assert (
        compare(
            Version(None, None, "2026-12-03T10:00:01.000Z", "e1"),
            Version("null", None, "2026-12-03T10:00:01.000Z", "e1"),
        )
        == 0
    )


# --------------------------------------------------------------------------- latest views


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _record(kind: str, version: str, sequencer: str, key: str = "photos/cat.jpg", **extra: Any) -> dict[str, Any]:
    source = {"bucket": "in", "key": key, "version_id": version, "sequencer": sequencer}
    if kind == PREDICTION:
        return {"status": "SUCCEEDED", "record_id": f"rid-{version}", "source": source, **extra}
    return {"status": "FAILED", "source": source, "error": {"type": "NotAnImageError", "message": "no"}, **extra}


def _publish(s3: Any, kind: str, version: str, sequencer: str, **extra: Any) -> records.Outcome:
    return records.publish(s3, BUCKET, kind, _record(kind, version, sequencer, **extra), PREFIXES, {})


def _get(s3: Any, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _view(s3: Any, kind: str) -> str | None:
    record = _get(s3, latest_key(PREFIXES[kind], "in", "photos/cat.jpg"))
    return None if record is None else record["source"]["version_id"]


def _entry(s3: Any, kind: str, version: str) -> dict[str, Any] | None:
    """The version's record of ``kind``, wherever it is (the latest view or its version's entry)."""
    found = records.find(s3, BUCKET, PREFIXES[kind], "in", "photos/cat.jpg", version)
    return None if found is None else found[1]


def _requests(s3: Any) -> Counter[str]:
    """The S3 operations the client sends from now on, counted by name."""
    sent: Counter[str] = Counter()
    s3.meta.events.register("before-call.s3.*", lambda model, **_: sent.update([model.name]))
    return sent


def test_the_first_record_of_a_key_costs_one_put_and_one_get(s3: Any) -> None:
    sent = _requests(s3)
    assert _publish(s3, PREDICTION, "v1", "0A").view == "written"
    # the view is the version's record (no second copy), and the failure view is looked at once;
    # a key without views has no failure entry to resolve, so nothing is deleted
    assert sent == Counter({"PutObject": 1, "GetObject": 1})
    assert _get(s3, version_key("predictions/", "in", "photos/cat.jpg", "v1")) is None
    entry = _entry(s3, PREDICTION, "v1")
    assert entry is not None
    assert entry["record_id"] == "rid-v1"


def test_a_newer_record_moves_the_one_it_replaces_to_its_versions_entry_byte_for_byte(s3: Any) -> None:
    records.publish(s3, BUCKET, PREDICTION, _record(PREDICTION, "v1", "0A"), PREFIXES, {"model-version": "m1"})
    view = s3.get_object(Bucket=BUCKET, Key=latest_key("predictions/", "in", "photos/cat.jpg"))
    _publish(s3, PREDICTION, "v2", "0B")
    entry = s3.get_object(Bucket=BUCKET, Key=version_key("predictions/", "in", "photos/cat.jpg", "v1"))
    assert entry["Body"].read() == view["Body"].read() and entry["Metadata"] == {"model-version": "m1"}
    v1 = _entry(s3, PREDICTION, "v1")
    assert v1 is not None
    assert (_view(s3, PREDICTION), v1["record_id"]) == ("v2", "rid-v1")


def test_a_late_record_of_an_older_version_updates_its_entry_but_never_the_latest_view(s3: Any) -> None:
    assert _publish(s3, PREDICTION, "v2", "0B").view == "written"
    late = _publish(s3, PREDICTION, "v1", "0A")
    assert late.view == "kept" and "v2" in late.reason
    assert _view(s3, PREDICTION) == "v2"
    assert _entry(s3, PREDICTION, "v1") is not None and _entry(s3, PREDICTION, "v2") is not None


def test_a_later_failure_keeps_the_earlier_failures_record(s3: Any) -> None:
    _publish(s3, FAILURE, "v1", "0A")
    _publish(s3, FAILURE, "v2", "0B")
    assert _view(s3, FAILURE) == "v2"
    entry = _entry(s3, FAILURE, "v1")
    assert entry is not None
    assert entry["source"]["version_id"] == "v1"


def test_a_newer_failure_retires_the_older_prediction_from_the_latest_view_only(s3: Any) -> None:
    _publish(s3, PREDICTION, "v1", "0A")
    _publish(s3, FAILURE, "v2", "0B")
    assert (_view(s3, PREDICTION), _view(s3, FAILURE)) == (None, "v2")
    assert _entry(s3, PREDICTION, "v1") is not None  # nothing lost: the version's own record stays
    # and an older version's failure arriving late changes nothing either
    assert _publish(s3, FAILURE, "v0", "09").view == "kept"
    assert _view(s3, FAILURE) == "v2"


def test_an_older_versions_prediction_after_a_newer_failure_steps_back_to_its_entry(s3: Any) -> None:
    _publish(s3, FAILURE, "v2", "0B")
    late = _publish(s3, PREDICTION, "v1", "0A")
    assert (
        late.view == "kept"
        and "v2" in late.reason
        and late.key == version_key("predictions/", "in", "photos/cat.jpg", "v1")
    )
    assert (_view(s3, PREDICTION), _view(s3, FAILURE)) == (None, "v2")
    entry = _entry(s3, PREDICTION, "v1")
    assert entry is not None
    assert entry["record_id"] == "rid-v1"


def test_a_prediction_resolves_its_own_versions_failure_and_a_failure_never_hides_a_success(s3: Any) -> None:
    _publish(s3, FAILURE, "v1", "0A")
    _publish(s3, PREDICTION, "v1", "0A")
    assert (_view(s3, PREDICTION), _view(s3, FAILURE), _entry(s3, FAILURE, "v1")) == ("v1", None, None)
    # a failure of the same version afterwards (another sink failed) is shown beside the prediction
    _publish(s3, FAILURE, "v1", "0A")
    assert (_view(s3, PREDICTION), _view(s3, FAILURE)) == ("v1", "v1")


def test_a_success_resolves_its_versions_failure_entry_while_a_newer_failure_is_the_view(s3: Any) -> None:
    # GIVEN v1 failed, then v2 failed too (v1's failure moved to its entry), and no prediction view
    _publish(s3, FAILURE, "v1", "0A")
    _publish(s3, FAILURE, "v2", "0B")
    assert _get(s3, version_key("failures/", "in", "photos/cat.jpg", "v1")) is not None
    # WHEN v1 is redriven and succeeds: its prediction's PUT finds no prediction view
    assert _publish(s3, PREDICTION, "v1", "0A").view == "kept"
    # THEN v1's failure is resolved all the same; v2's stays the view
    assert _entry(s3, FAILURE, "v1") is None and _entry(s3, PREDICTION, "v1") is not None
    assert (_view(s3, PREDICTION), _view(s3, FAILURE)) == (None, "v2")


def test_a_duplicate_prediction_leaves_the_view_unchanged(s3: Any) -> None:
    _publish(s3, PREDICTION, "v1", "0A", execution_id="first")
    assert _publish(s3, PREDICTION, "v1", "0A", execution_id="second").view == "unchanged"
    view = _get(s3, latest_key("predictions/", "in", "photos/cat.jpg"))
    assert view is not None
    assert view["execution_id"] == "first"


def test_a_view_changed_since_it_was_read_is_not_overwritten(s3: Any) -> None:
    key = latest_key("predictions/", "in", "photos/cat.jpg")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    stale = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"changed": true}')
    # S3 refuses a write conditional on the ETag read before (412 PreconditionFailed) ...
    assert records._put(s3, BUCKET, key, {"x": 1}, stale, {}) is None
    # ... and one conditional on there being nothing, once there is something
    assert records._put(s3, BUCKET, key, {"x": 1}, None, {}) is None
    # ... and a delete conditional on the ETag read before
    assert records.delete(s3, BUCKET, key, stale) is False
    assert _get(s3, key) == {"changed": True}


def test_a_view_with_nothing_to_order_it_by_is_replaced(s3: Any) -> None:
    # GIVEN a view written before views were ordered (no sequencer, no LastModified)
    key = latest_key("predictions/", "in", "photos/cat.jpg")
    s3.put_object(
        Bucket=BUCKET, Key=key, Body=json.dumps({"record_id": "old", "source": {"version_id": "v0"}}).encode()
    )
    # THEN a record that can be ordered replaces it instead of being blocked by it for good
    assert _publish(s3, PREDICTION, "v1", "0A").view == "written" and _view(s3, PREDICTION) == "v1"


def test_an_older_versions_late_success_resolves_its_own_failure_record(s3: Any) -> None:
    _publish(s3, FAILURE, "v1", "0A")
    _publish(s3, PREDICTION, "v2", "0B")
    # WHEN v1 is redriven and succeeds after all
    assert _publish(s3, PREDICTION, "v1", "0A").view == "kept"
    # THEN its failure record is resolved, and the latest views still describe v2
    assert _entry(s3, FAILURE, "v1") is None and _entry(s3, PREDICTION, "v1") is not None
    assert (_view(s3, PREDICTION), _view(s3, FAILURE)) == ("v2", None)


def test_each_upload_to_an_unversioned_bucket_keeps_its_own_record(s3: Any) -> None:
    for etag, sequencer in (("e1", "0A"), ("e2", "0B")):
        records.publish(
            s3,
            BUCKET,
            FAILURE,
            {
                **_record(FAILURE, "null", sequencer),
                "source": {
                    "bucket": "in",
                    "key": "photos/cat.jpg",
                    "version_id": None,
                    "sequencer": sequencer,
                    "etag": etag,
                },
            },
            PREFIXES,
            {},
        )
    found = {etag: records.find(s3, BUCKET, "failures/", "in", "photos/cat.jpg", None, etag) for etag in ("e1", "e2")}
    # the older upload's record moved to its entry; the newer one is the view
    assert {etag: None if at is None else at[0] for etag, at in found.items()} == {
        "e1": version_key("failures/", "in", "photos/cat.jpg", None, "e1"),
        "e2": latest_key("failures/", "in", "photos/cat.jpg"),
    }
