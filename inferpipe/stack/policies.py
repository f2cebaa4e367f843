"""The stack's IAM roles and the policy documents Terraform deploys (``terraform/policies/*.json.tftpl``).

stack.json ``iam.roles`` says, per role, which service assumes it, its name, when it exists and which
templates it gets; Terraform reads the same data (``terraform/locals.tf``, ``local.role_policies``) and
attaches each rendered template as an inline policy (``terraform/iam.tf``). This module renders the very
same files with the same Terraform-compatible renderer (:func:`inferpipe.stack.resources.render_template`),
so the local stack and the tests can run each function, the state machine and the trigger under exactly
the policies they get in AWS. ``tests/infra`` checks that real Terraform renders identical structures.

Example::

    resources = render_resources()
    policies = role_policies(resources)                  # role -> template name -> policy document
    policies["sink"]["sink-sqs"]["Statement"][0]         # {"Sid": "SendPredictions", ..., "Resource": "arn:aws:sqs:..."}
    role_services()["state_machine"]                     # "states.amazonaws.com"
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
#: The alias the state machine invokes in AWS (stack.json ``function_alias``).
FUNCTION_ALIAS: str = stack.STACK["function_alias"]["name"]
#: Sinks in the order config/stack.json lists them (terraform/locals.tf ``known_sinks`` reads the same list).
KNOWN_SINKS = stack.SINKS
#: Role key -> its rules (stack.json ``iam.roles``): service, name pattern, when, policies, sink_policies, xray, kms.
ROLES: Mapping[str, Mapping[str, Any]] = stack.STACK["iam"]["roles"]
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
    for key, spec in resources.functions.items():
        values[spec.log_group_arn_placeholder] = resources.arn(
            "logs", f"log-group:{function_log_group(resources, key)}"
        )
        values[spec.function_arn_placeholder] = arns[key]
    if partition != "aws":
        values = {name: value.replace("arn:aws:", f"arn:{partition}:", 1) for name, value in values.items()}
    return values


def role_names(resources: Resources) -> dict[str, str]:
    """Role key -> IAM role name, for every role stack.json defines (terraform/locals.tf ``role_names``).

    A pattern may use the stack's names, the keep-warm schedule's as ``${keep_warm}`` and each
    function's as ``${<function>_function}``.
    """
    names = {
        "state_machine": resources.state_machine,
        "trigger_rule": resources.trigger_rule,
        "pipe": resources.trigger_buffer.pipe,
        "backfill_state_machine": resources.backfill.state_machine,
        "keep_warm": resources.keep_warm_schedule,
        **{f"{key}_function": spec.name for key, spec in resources.functions.items()},
    }
    return {key: render_template(role["name"], names) for key, role in ROLES.items()}


def _roles_enabled(*, keep_warm: bool, trigger: bool, pipe: bool, backfill: bool) -> dict[str, bool]:
    """stack.json ``iam.roles.*.when`` -> whether this deployment has such roles (terraform/locals.tf ``role_enabled``)."""
    return {"always": True, "direct": trigger, "batched": pipe, "backfill": backfill, "keep_warm": keep_warm}


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
    the backfill state machine's role (Terraform creates it with the output bucket). As in Terraform,
    every role stack.json defines is a key, and a role this deployment does not have maps to ``[]``.

    Example::

        role_policy_templates(render_resources(), sinks=["sqs"], xray=False)["sink"]   # ['sink', 'sink-sqs']
        role_policy_templates(render_resources(), trigger=False, pipe=True)["pipe"]    # ['pipe']
    """
    enabled = set(resources.defaults.sinks if sinks is None else sinks)
    unknown = enabled - set(KNOWN_SINKS)
    if unknown:
        raise ValueError(f"unknown sink(s): {', '.join(sorted(unknown))}; known: {', '.join(KNOWN_SINKS)}")
    missing = set(resources.functions) - set(ROLES)
    if missing:
        raise KeyError(f"no policy templates for function(s): {', '.join(sorted(missing))}")
    exists = _roles_enabled(keep_warm=keep_warm, trigger=trigger, pipe=pipe, backfill=backfill)
    sink_templates = [f"sink-{sink}" for sink in KNOWN_SINKS if sink in enabled]
    return {
        key: [
            *role["policies"],
            *(sink_templates if role["sink_policies"] else []),
            *(["xray"] if role["xray"] and xray else []),
            *(["kms"] if role["kms"] and kms else []),
        ]
        if exists[role["when"]]
        else []
        for key, role in ROLES.items()
    }


def role_services(
    *,
    keep_warm: bool = False,
    trigger: bool = True,
    pipe: bool = False,
    backfill: bool = False,
) -> dict[str, str]:
    """Role key -> the service principal that assumes it, for the roles this deployment has
    (terraform/locals.tf ``role_services``). ``trigger``, ``pipe`` and ``backfill`` as in
    :func:`role_policy_templates`.
    """
    exists = _roles_enabled(keep_warm=keep_warm, trigger=trigger, pipe=pipe, backfill=backfill)
    return {key: str(role["service"]) for key, role in ROLES.items() if exists[role["when"]]}


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
    "POLICY_DIR",
    "ROLES",
    "function_log_group",
    "placeholders",
    "policy_templates",
    "policy_values",
    "render_policy",
    "role_names",
    "role_policies",
    "role_policy_templates",
    "role_services",
]
