"""The IAM policy documents Terraform deploys (``terraform/policies/*.json.tftpl``), rendered in Python.

Terraform renders each template with ``templatefile()`` (``terraform/locals.tf``, ``local.role_policies``)
and attaches it as an inline policy (``terraform/iam.tf``). This module renders the very same files with
the same Terraform-compatible renderer (:func:`inferpipe.stack.resources.render_template`) and makes the same
choice of templates per role, so the local stack and the tests can run each function, the state machine
and the trigger under exactly the policies they get in AWS. ``tests/infra`` checks that real Terraform
renders identical documents.

Example::

    resources = render_resources()
    policies = role_policies(resources)                  # role -> template name -> policy document
    policies["sink"]["sink-sqs"]["Statement"][0]         # {"Sid": "SendPredictions", ..., "Resource": "arn:aws:sqs:..."}
    role_services(resources)["state_machine"]            # "states.amazonaws.com"
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from functions.common import stack
from inferpipe.paths import REPO_ROOT
from inferpipe.stack.resources import Resources, TemplateError, render_template

POLICY_DIR = REPO_ROOT / "terraform" / "policies"
TEMPLATE_SUFFIX = ".json.tftpl"
#: The alias the state machine invokes in AWS (terraform/locals.tf ``function_alias``).
FUNCTION_ALIAS = "live"
#: Sinks in the order config/stack.json lists them (terraform/locals.tf ``known_sinks`` reads the same list).
KNOWN_SINKS = stack.SINKS
#: Role key -> the service that assumes it (terraform/locals.tf ``role_services``); functions add theirs.
ORCHESTRATION_ROLE_SERVICES = {
    "state_machine": "states.amazonaws.com",
    "trigger": "events.amazonaws.com",
    "keep_warm": "scheduler.amazonaws.com",
}
#: Roles only some deployments have (terraform/locals.tf ``role_services``): the pipe's in the
#: batched trigger mode, the backfill state machine's with the output bucket.
OPTIONAL_ROLE_SERVICES = {
    "pipe": "pipes.amazonaws.com",
    "backfill": "states.amazonaws.com",
}
#: Placeholder of the log group ARN / function ARN of each function.
_LOG_GROUP_PLACEHOLDERS = {"preprocess": "PreprocessLogGroupArn", "inference": "InferenceLogGroupArn", "sink": "SinkLogGroupArn"}
_FUNCTION_PLACEHOLDERS = {"preprocess": "PreprocessFunctionArn", "inference": "InferenceFunctionArn", "sink": "SinkFunctionArn"}
_PLACEHOLDER = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def policy_templates(directory: Path = POLICY_DIR) -> dict[str, str]:
    """Template name (file name without ``.json.tftpl``) -> template text."""
    return {
        path.name[: -len(TEMPLATE_SUFFIX)]: path.read_text(encoding="utf-8")
        for path in sorted(directory.glob(f"*{TEMPLATE_SUFFIX}"))
    }


def placeholders(text: str) -> set[str]:
    """The ``${Name}`` placeholders of a template (``$${...}`` escapes excluded).

    >>> sorted(placeholders('{"a": "${X}", "b": "$${Y}", "c": "${Z}"}'))
    ['X', 'Z']
    """
    return set(_PLACEHOLDER.findall(text))


def function_log_group(resources: Resources, key: str) -> str:
    """Lambda's log group of a function (Terraform creates it ahead of the function)."""
    return f"/aws/lambda/{resources.functions[key].name}"


def policy_values(
    resources: Resources,
    *,
    partition: str = "aws",
    function_arns: Mapping[str, str] | None = None,
    qualifier: str | None = None,
    kms_key_arn: str | None = None,
    input_key_prefix: str = "",
) -> dict[str, str]:
    """The value of every placeholder of the policy templates (terraform/locals.tf ``policy_vars``).

    ``function_arns`` override the functions' ARNs (default: AWS's unqualified form); ``qualifier``
    appends ``:<qualifier>`` to each, e.g. ``FUNCTION_ALIAS`` for what Terraform deploys.
    ``input_key_prefix`` is Terraform's variable of that name (the local stack owns its whole input
    bucket: "").
    """
    arns = {key: resources.function_arn(key) for key in resources.functions}
    arns.update(function_arns or {})
    if qualifier:
        arns = {key: f"{arn}:{qualifier}" for key, arn in arns.items()}
    values = {
        "Partition": partition,
        "InputBucket": resources.buckets["input"],
        "InputKeyPrefix": input_key_prefix,
        "ModelBucket": resources.buckets["models"],
        "WorkBucket": resources.buckets["work"],
        "WorkPrefix": resources.settings["WORK_PREFIX"],
        "OutputBucket": resources.buckets["output"],
        "OutputPrefix": resources.settings["OUTPUT_PREFIX"],
        "LedgerPrefix": stack.LEDGER_PREFIX,
        "FailurePrefix": stack.FAILURE_PREFIX,
        "TableArn": resources.table_arn,
        "ClaimsTableArn": resources.claims_table_arn,
        "TopicArn": resources.topic_arn,
        "QueueArn": resources.queue_arn,
        "EventBusArn": resources.event_bus_arn,
        "StateMachineArn": resources.state_machine_arn,
        "KmsKeyArn": kms_key_arn or "",
        "Region": resources.region,
        "AccountId": resources.account_id,
        "StateMachineName": resources.state_machine,
        "TriggerBufferQueueArn": resources.arn("sqs", resources.trigger_buffer.queue),
        "BackfillStateMachineArn": resources.arn("states", f"stateMachine:{resources.backfill.state_machine}"),
        "BackfillStateMachineName": resources.backfill.state_machine,
        "BackfillResultsPrefix": resources.backfill.results_prefix,
    }
    for key, placeholder in _LOG_GROUP_PLACEHOLDERS.items():
        values[placeholder] = resources.arn("logs", f"log-group:{function_log_group(resources, key)}")
    for key, placeholder in _FUNCTION_PLACEHOLDERS.items():
        values[placeholder] = arns[key]
    if partition != "aws":
        values = {name: value.replace("arn:aws:", f"arn:{partition}:", 1) for name, value in values.items()}
    return values


def role_policy_templates(
    resources: Resources,
    *,
    sinks: Iterable[str] | None = None,
    xray: bool = True,
    kms: bool = False,
    keep_warm: bool = False,
    trigger: bool = True,
    pipe: bool = False,
    backfill: bool = False,
) -> dict[str, list[str]]:
    """Role key -> the templates attached to it (terraform/locals.tf ``role_policy_templates``).

    ``sinks`` defaults to the stack's default sinks, as Terraform's ``var.sinks`` does. ``trigger``
    (the rule's target role) and ``pipe`` (the pipe's role) follow Terraform's ``trigger_mode``:
    "direct" is ``trigger=True, pipe=False``, "batched" ``trigger=False, pipe=True``. ``backfill``:
    the backfill state machine's role (Terraform creates it with the output bucket). ``trigger=False``
    maps the trigger role to ``[]``; the pipe and backfill roles appear only when asked for, so the
    defaults give what they always gave.

    Example::

        role_policy_templates(render_resources(), sinks=["sqs"], xray=False)["sink"]   # ['sink', 'sink-sqs']
        role_policy_templates(render_resources(), trigger=False, pipe=True)["pipe"]    # ['pipe']
    """
    enabled = set(resources.defaults.sinks if sinks is None else sinks)
    unknown = enabled - set(KNOWN_SINKS)
    if unknown:
        raise ValueError(f"unknown sink(s): {', '.join(sorted(unknown))}; known: {', '.join(KNOWN_SINKS)}")
    common = (["xray"] if xray else []) + (["kms"] if kms else [])
    templates = {
        "preprocess": ["preprocess", *common],
        "inference": ["inference", *common],
        "sink": ["sink", *[f"sink-{sink}" for sink in KNOWN_SINKS if sink in enabled], *common],
        "state_machine": ["state-machine", *(["xray"] if xray else [])],
        "trigger": ["trigger"] if trigger else [],
        "keep_warm": ["keep-warm"] if keep_warm else [],
    }
    # Roles only some deployments have appear only when asked for (Terraform maps them to [] otherwise).
    if pipe:
        templates["pipe"] = ["pipe", *(["kms"] if kms else [])]
    if backfill:
        templates["backfill"] = ["backfill", *(["xray"] if xray else []), *(["kms"] if kms else [])]
    missing = set(resources.functions) - set(templates)
    if missing:
        raise KeyError(f"no policy templates for function(s): {', '.join(sorted(missing))}")
    return templates


def role_services(
    resources: Resources,
    *,
    keep_warm: bool = False,
    trigger: bool = True,
    pipe: bool = False,
    backfill: bool = False,
) -> dict[str, str]:
    """Role key -> the service principal that assumes it (terraform/locals.tf ``role_services``).

    ``trigger``, ``pipe`` and ``backfill`` as in :func:`role_policy_templates`.
    """
    services = {key: "lambda.amazonaws.com" for key in resources.functions}
    services.update(ORCHESTRATION_ROLE_SERVICES)
    if not keep_warm:
        del services["keep_warm"]
    if not trigger:
        del services["trigger"]
    for key, wanted in (("pipe", pipe), ("backfill", backfill)):
        if wanted:
            services[key] = OPTIONAL_ROLE_SERVICES[key]
    return services


def render_policy(text: str, values: Mapping[str, str]) -> dict[str, Any]:
    """A template rendered like Terraform's ``templatefile()`` and parsed; fails on a missing value."""
    rendered = render_template(text, values)
    try:
        document: dict[str, Any] = json.loads(rendered)
    except ValueError as exc:
        raise TemplateError(f"a rendered policy is not valid JSON: {exc}") from None
    return document


def role_policies(
    resources: Resources,
    *,
    partition: str = "aws",
    sinks: Iterable[str] | None = None,
    xray: bool = True,
    kms_key_arn: str | None = None,
    keep_warm: bool = False,
    trigger: bool = True,
    pipe: bool = False,
    backfill: bool = False,
    function_arns: Mapping[str, str] | None = None,
    qualifier: str | None = None,
    directory: Path = POLICY_DIR,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Role key -> template name -> policy document, as Terraform attaches them.

    For the local stack pass its function ARNs (unqualified); ``qualifier=FUNCTION_ALIAS`` gives the
    documents of an AWS deployment. ``trigger``, ``pipe`` and ``backfill`` as in
    :func:`role_policy_templates`.
    """
    texts = policy_templates(directory)
    values = policy_values(
        resources, partition=partition, function_arns=function_arns, qualifier=qualifier, kms_key_arn=kms_key_arn
    )
    chosen = role_policy_templates(
        resources,
        sinks=sinks,
        xray=xray,
        kms=kms_key_arn is not None,
        keep_warm=keep_warm,
        trigger=trigger,
        pipe=pipe,
        backfill=backfill,
    )
    return {role: {name: render_policy(texts[name], values) for name in names} for role, names in chosen.items()}


__all__ = [
    "FUNCTION_ALIAS",
    "KNOWN_SINKS",
    "OPTIONAL_ROLE_SERVICES",
    "POLICY_DIR",
    "function_log_group",
    "placeholders",
    "policy_templates",
    "policy_values",
    "render_policy",
    "role_policies",
    "role_policy_templates",
    "role_services",
]
