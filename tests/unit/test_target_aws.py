"""The CLI's AWS target: reading `terraform output -json inferpipe`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferpipe.target import Target, TargetError, parse_terraform_output, read_terraform_output, resources_from_output

OUTPUT = {
    "prefix": "acme",
    "account_id": "210987654321",
    "region": "eu-west-1",
    "buckets": {"input": "acme-in", "models": "acme-models", "work": "acme-work", "output": None},
    "table": "acme-predictions",
    "topic_arn": "arn:aws:sns:eu-west-1:210987654321:acme-predictions",
    "queue_url": "https://sqs.eu-west-1.amazonaws.com/210987654321/acme-predictions",
    "event_bus": None,
    "state_machine_arn": "arn:aws:states:eu-west-1:210987654321:stateMachine:acme-pipeline",
    "state_machine_type": "STANDARD",
    "functions": {"preprocess": "acme-preprocess", "inference": "acme-inference", "sink": "acme-sink"},
    "trigger_rule": "acme-trigger",
    "sinks": ["dynamodb", "sqs"],
    "defaults": {"top_k": 3, "model": "resnet", "model_version": "prod"},
}


@pytest.mark.parametrize("shape", ["bare", "output", "all_outputs"])
def test_the_inferpipe_object_is_found_in_every_shape_terraform_prints(shape: str) -> None:
    wrapped = {"sensitive": False, "type": ["object", {}], "value": OUTPUT}
    raw = {
        "bare": OUTPUT,
        "output": wrapped,
        "all_outputs": {"inferpipe": wrapped, "input_bucket_name": {"value": "x"}},
    }[shape]
    assert parse_terraform_output(raw) == OUTPUT


def test_resources_take_the_deployed_names_and_defaults() -> None:
    resources = resources_from_output(OUTPUT)
    assert (resources.account_id, resources.region) == ("210987654321", "eu-west-1")
    assert resources.buckets["input"] == "acme-in" and resources.buckets["models"] == "acme-models"
    assert resources.state_machine_arn == OUTPUT["state_machine_arn"]
    assert resources.functions["inference"].name == "acme-inference"
    assert resources.table == "acme-predictions" and resources.topic_arn == OUTPUT["topic_arn"]
    assert resources.queue == "acme-predictions"
    assert resources.defaults.sinks == ("dynamodb", "sqs") and resources.defaults.top_k == 3


def test_missing_fields_and_bad_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="lacks state_machine_arn"):
        parse_terraform_output({k: v for k, v in OUTPUT.items() if k != "state_machine_arn"})
    with pytest.raises(TargetError, match="no 'inferpipe' object"):
        parse_terraform_output(["nope"])
    bad = tmp_path / "out.json"
    bad.write_text("not json")
    with pytest.raises(TargetError, match="not JSON"):
        read_terraform_output(bad)
    with pytest.raises(TargetError, match="cannot read"):
        read_terraform_output(tmp_path / "missing.json")


def test_connect_with_a_terraform_output_file_targets_aws_without_an_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({"inferpipe": {"sensitive": False, "type": "object", "value": OUTPUT}}))
    target = Target.connect(terraform_output=path)
    assert target.endpoint_url is None
    client = target.client("s3")
    assert client.meta.region_name == "eu-west-1" and "amazonaws.com" in client.meta.endpoint_url


def test_inferpipe_target_aws_without_terraform_explains_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERPIPE_TARGET", "aws")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TargetError, match="--terraform-output"):
        Target.connect()
