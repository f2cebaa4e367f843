"""How ``inferpipe classify`` and ``backfill`` decide one object's outcome from its execution."""

from __future__ import annotations

from typing import Any

from inferpipe.classify import object_error

CLASSIFIED = {"status": "CLASSIFIED", "source": {"key": "a.jpg"}}
FAILED = {
    "status": "FAILED",
    "source": {"key": "b.png"},
    "error": {"type": "NotAnImageError", "message": "b.png is not an image"},
}
STOPPED = {
    "type": "SinkUnavailableError",
    "message": "sink 'sqs' refused the batch: AWS.SimpleQueueService.NonExistentQueue",
}


def _never() -> Any:
    raise AssertionError("the history is read only when a classified object's execution failed")


def test_a_classified_object_of_a_succeeded_execution_succeeded() -> None:
    assert object_error(CLASSIFIED, True, _never, STOPPED) is None


def test_a_classified_object_fails_when_its_execution_stopped_after_classifying() -> None:
    # a sink that stayed down stops the execution at Deliver (redrivable): no RecordFailure ran
    assert object_error(CLASSIFIED, False, lambda: None, STOPPED) == STOPPED


def test_a_classified_object_fails_with_the_sink_recordfailure_noted() -> None:
    noted = {"type": "SinkUnavailableError", "message": "sink 'sns' refused"}
    assert object_error(CLASSIFIED, False, lambda: noted, STOPPED) == noted


def test_a_classified_object_succeeded_when_only_other_objects_failed() -> None:
    # RecordFailure ran for the batch's bad object and every sink delivered this one
    other = {"type": "NotAnImageError", "message": "b.png is not an image"}
    assert object_error(CLASSIFIED, False, dict, other) is None
    assert object_error(FAILED, False, _never, other) == {"type": "NotAnImageError", "message": "b.png is not an image"}
