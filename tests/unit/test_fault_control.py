"""inferpipe.fault_control: the body `inferpipe local fault add` sends, the rule lines it prints, loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferpipe.fault_control import FaultControlError, describe, local_endpoint, rule_spec


def test_a_rule_fails_one_request_unless_count_or_rate_says_otherwise() -> None:
    assert rule_spec("s3:GetObject") == {"service": "s3", "operation": "GetObject", "count": 1, "delay": 0.0}
    assert rule_spec("sqs", rate=0.5, match="queue") == {"service": "sqs", "rate": 0.5, "delay": 0.0, "match": "queue"}
    assert rule_spec("s3:PutObject", error="SlowDown", status=503, count=3)["count"] == 3


def test_rule_lines() -> None:
    rule = {
        "service": "s3",
        "operation": "GetObject",
        "error": "SlowDown",
        "status": 503,
        "delay": 0.0,
        "rate": None,
        "remaining": 2,
        "match": "photos/",
        "fired": 1,
    }
    assert describe(rule) == "s3:GetObject matching 'photos/': SlowDown (HTTP 503), every request, 2 left, fired 1"
    held = {**rule, "delay": 1.5, "rate": 0.25, "remaining": None, "match": None}
    assert describe(held) == "s3:GetObject: held 1.5 s, 25% of requests, until cleared, fired 1"


def test_faults_are_injected_on_loopback_only(tmp_path: Path) -> None:
    assert local_endpoint("http://127.0.0.1:4599", tmp_path) == "http://127.0.0.1:4599"
    with pytest.raises(FaultControlError, match="not a local stack: faults are injected on loopback only"):
        local_endpoint("https://s3.amazonaws.com", tmp_path)
