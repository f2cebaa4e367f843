"""The stack definition (``config/stack.json``) rendered into concrete resource names.

``config/stack.json`` is the one definition of inferpipe's resources; Terraform reads the same file.
This module renders it for one (prefix, account, region), gives every function exactly the
environment variables the file lists for it, and fills the state machine's ``${Name}`` placeholders
the way Terraform's ``templatefile()`` does.

Example::

    resources = render_resources()                      # prefix "inferpipe", 123456789012, us-east-1
    resources.buckets["input"]                          # "inferpipe-input-123456789012-us-east-1"
    env = function_environment(resources, "sink", queue_url=url)
    asl = render_asl(resources.definition_path.read_text(), asl_values(resources))
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from functions.common import stack as definition
from functions.common.batch import Defaults  # the deployment defaults, as the functions read them from the ASL
from inferpipe.paths import REPO_ROOT

#: Local defaults: moto's default account and region.
DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"

#: Local-only observers (not part of the product): read SNS and the predictions bus back.
LOCAL_SNS_TAP = "${prefix}-local-sns-tap"
LOCAL_EVENTS_TAP = "${prefix}-local-events-tap"

#: One template token, scanned left to right as HCL does: an escape ("$${", "%%{"), a placeholder
#: "${Name}", or any other "${"/"%{" (an expression or directive we do not support).
_TOKEN = re.compile(r"\$\$\{|%%\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{|%\{")


class TemplateError(ValueError):
    """A template has a placeholder without a value, or something Terraform would not render."""


def render_template(text: str, values: Mapping[str, Any]) -> str:
    """Fill ``${Name}`` placeholders exactly like Terraform's ``templatefile()``; fail on anything else.

    As in Terraform, ``$${`` renders as a literal ``${`` and ``%%{`` as ``%{``, ``$$.`` JSONPath (e.g.
    ``$$.Execution.Id``) is plain text, values are inserted as text (numbers via ``str``), and
    any other ``${...}`` or ``%{...}`` is an error (Terraform would reject the file too).

    >>> render_template('{"a": "${X}", "id.$": "$$.Execution.Id", "lit": "$${Y}"}', {"X": 1})
    '{"a": "1", "id.$": "$$.Execution.Id", "lit": "${Y}"}'
    """
    missing: set[str] = set()
    unsupported: list[str] = []

    def replace(match: re.Match[str]) -> str:
        token, name = match.group(0), match.group(1)
        if token == "$${":
            return "${"
        if token == "%%{":
            return "%{"
        if name is None:
            unsupported.append(text[match.start() : match.start() + 40])
            return token
        if name not in values:
            missing.add(name)
            return token
        return str(values[name])

    rendered = _TOKEN.sub(replace, text)
    if missing:
        raise TemplateError(f"no value for placeholder(s): {', '.join(sorted(missing))}")
    if unsupported:
        raise TemplateError(
            f"{len(unsupported)} template expression(s) Terraform would not render as a placeholder, first: "
            f"{unsupported[0]!r} (write $${{ or %%{{ for a literal ${{ or %{{)"
        )
    return rendered


def render_asl(text: str, values: Mapping[str, Any]) -> str:
    """The state machine definition with every ``${Name}`` bound; the result must be JSON.

    Example::

        definition = render_asl(Path("state_machine/pipeline.asl.json").read_text(), asl_values(resources))
    """
    rendered = render_template(text, values)
    try:
        json.loads(rendered)
    except ValueError as exc:
        raise TemplateError(f"the rendered state machine is not valid JSON: {exc}") from None
    return rendered


def _render_value(value: Any, variables: Mapping[str, Any]) -> Any:
    """Decoded JSON (frozen or not) with every string rendered; lists and dicts come back plain."""
    if isinstance(value, str):
        return render_template(value, variables)
    if isinstance(value, list | tuple):
        return [_render_value(item, variables) for item in value]
    if isinstance(value, Mapping):
        return {key: _render_value(item, variables) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda function: its name, handler command, size, timeout, variable names and placeholders."""

    key: str  # "preprocess" | "inference" | "sink"
    name: str
    command: str  # the handler's dotted path, the image's CMD
    memory_mb: int
    timeout_s: int
    environment: tuple[str, ...]  # exactly the variables this function receives
    #: the ``${Name}`` of its ARN in the ASL and the policy templates, e.g. "SinkFunctionArn"
    function_arn_placeholder: str
    #: the ``${Name}`` of its log group's ARN in the policy templates, e.g. "SinkLogGroupArn"
    log_group_arn_placeholder: str


@dataclass(frozen=True)
class LocalLambda:
    """How the local stack runs Lambda on this machine (stack.json ``local``; not deployed)."""

    max_environments: Mapping[str, int]  # per function key, when it has no reserved concurrency
    idle_environment_seconds: float  # a warm environment unused this long is stopped


@dataclass(frozen=True)
class TriggerBuffer:
    """The micro-batched trigger (stack.json ``trigger_buffer``): rule -> SQS queue -> Pipe -> state machine."""

    queue: str
    dlq: str
    pipe: str
    default_mode: str
    modes: tuple[str, ...]
    batch_size: int  # settings.MAX_BATCH_OBJECTS
    batching_window_s: int
    visibility_timeout_s: int
    max_receive_count: int
    input_template: str


@dataclass(frozen=True)
class TriggerTarget:
    """stack.json ``trigger_target``: the trigger rule's one target's id and retry policy."""

    id: str
    maximum_event_age_s: int
    maximum_retry_attempts: int


@dataclass(frozen=True)
class Backfill:
    """``inferpipe backfill`` (stack.json ``backfill``): a Distributed Map over a prefix."""

    state_machine: str
    definition_path: Path
    max_concurrency: int
    tolerated_failure_percentage: float
    results_prefix: str


@dataclass(frozen=True)
class Claims:
    """stack.json ``claims``: the table Preprocess claims event-named object versions in."""

    table: str
    key_attribute: str
    ttl_attribute: str


@dataclass(frozen=True)
class StatusRule:
    """stack.json ``status_rule``: the pipeline's status change events -> the sink function's status recorder."""

    rule: str
    target_id: str
    dlq: str
    pattern_json: str
    input_paths: Mapping[str, str]
    #: still holds the ASL's Default* placeholders: render it with :func:`asl_values`
    input_template: str
    maximum_event_age_s: int
    maximum_retry_attempts: int

    @property
    def pattern(self) -> dict[str, Any]:
        return json.loads(self.pattern_json)


@dataclass(frozen=True)
class Resources:
    """Every resource name of one rendered stack (same names Terraform creates)."""

    prefix: str
    account_id: str
    region: str
    buckets: Mapping[str, str]  # input, models, work, output
    table: str
    claims: Claims
    topic: str
    queue: str
    event_bus: str
    state_machine: str
    definition_path: Path
    trigger_rule: str
    trigger_dlq: str
    trigger_pattern_json: str
    functions: Mapping[str, FunctionSpec]
    #: stack.json ``function_environment.values``: variable name -> pattern over the stack's values
    environment: Mapping[str, str]
    settings: Mapping[str, str]
    defaults: Defaults
    local_sns_tap: str  # local observer queue subscribed to the topic (not in the product)
    local_events_tap: str  # local observer queue + rule on the predictions bus (not in the product)
    local_lambda: LocalLambda
    trigger_buffer: TriggerBuffer
    trigger_target: TriggerTarget
    status_rule: StatusRule
    backfill: Backfill
    keep_warm_schedule: str  # the optional keep-warm schedule (Terraform's keep_warm_enabled)
    image_repository: str  # the functions' container image repository (ECR)

    @property
    def trigger_pattern(self) -> dict[str, Any]:
        """The trigger rule's event pattern (a fresh dict on every call)."""
        return json.loads(self.trigger_pattern_json)

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account_id}:{resource}"

    @property
    def topic_arn(self) -> str:
        return self.arn("sns", self.topic)

    @property
    def queue_arn(self) -> str:
        return self.arn("sqs", self.queue)

    @property
    def queue_url(self) -> str:
        """The queue's URL as AWS names it (SDKs route by their endpoint, not by this host)."""
        return f"https://sqs.{self.region}.amazonaws.com/{self.account_id}/{self.queue}"

    @property
    def event_bus_arn(self) -> str:
        return self.arn("events", f"event-bus/{self.event_bus}")

    @property
    def table_arn(self) -> str:
        return self.arn("dynamodb", f"table/{self.table}")

    @property
    def claims_table_arn(self) -> str:
        return self.arn("dynamodb", f"table/{self.claims.table}")

    @property
    def state_machine_arn(self) -> str:
        return self.arn("states", f"stateMachine:{self.state_machine}")

    def function_arn(self, key: str) -> str:
        return self.arn("lambda", f"function:{self.functions[key].name}")


def render_resources(
    prefix: str | None = None,
    account_id: str = DEFAULT_ACCOUNT_ID,
    region: str = DEFAULT_REGION,
    stack: Mapping[str, Any] | None = None,
    *,
    default_model: str | None = None,
) -> Resources:
    """Render the stack definition for one (prefix, account, region); ``prefix`` defaults to the file's.

    ``default_model`` replaces the file's ``defaults.model``, as Terraform's ``default_model``
    variable does (None: the file's).
    """
    raw = stack if stack is not None else definition.STACK
    prefix = prefix or raw["prefix"]
    defaults = dict(raw["defaults"])
    if default_model is not None:
        defaults["model"] = default_model
    variables: dict[str, Any] = {
        "prefix": prefix,
        "account_id": account_id,
        "region": region,
        "default_model": defaults["model"],
        "default_model_version": defaults["model_version"],
    }
    buckets = _render_value(raw["buckets"], variables)
    variables.update({f"{name}_bucket": bucket for name, bucket in buckets.items()})
    state_machine = _render_value(raw["state_machine"], variables)
    status = raw["status_rule"]
    status_vars = {
        **variables,
        "state_machine_arn": f"arn:aws:states:{region}:{account_id}:stateMachine:{state_machine}",
    }
    functions = {
        key: FunctionSpec(
            key=key,
            name=_render_value(spec["name"], variables),
            command=spec["command"],
            memory_mb=int(spec["memory_mb"]),
            timeout_s=int(spec["timeout_s"]),
            environment=tuple(spec["environment"]),
            function_arn_placeholder=str(spec["placeholders"]["function_arn"]),
            log_group_arn_placeholder=str(spec["placeholders"]["log_group_arn"]),
        )
        for key, spec in raw["functions"].items()
    }
    # Names derived from the functions' (the keep-warm schedule's) may use ${<function>_function}.
    function_vars = {**variables, **{f"{key}_function": spec.name for key, spec in functions.items()}}
    return Resources(
        prefix=prefix,
        account_id=account_id,
        region=region,
        buckets=MappingProxyType(dict(buckets)),
        table=_render_value(raw["table"], variables),
        claims=Claims(
            table=_render_value(raw["claims"]["table"], variables),
            key_attribute=str(raw["claims"]["key_attribute"]),
            ttl_attribute=str(raw["claims"]["ttl_attribute"]),
        ),
        topic=_render_value(raw["topic"], variables),
        queue=_render_value(raw["queue"], variables),
        event_bus=_render_value(raw["event_bus"], variables),
        state_machine=state_machine,
        definition_path=REPO_ROOT / raw["state_machine_definition"],
        trigger_rule=_render_value(raw["trigger_rule"], variables),
        trigger_dlq=_render_value(raw["trigger_dlq"], variables),
        trigger_pattern_json=json.dumps(_render_value(raw["trigger_pattern"], variables), sort_keys=True),
        functions=MappingProxyType(functions),
        environment=MappingProxyType(dict(raw["function_environment"]["values"])),
        settings=MappingProxyType({k: str(_render_value(v, variables)) for k, v in raw["settings"].items()}),
        defaults=Defaults(
            sinks=tuple(defaults["sinks"]),
            top_k=int(defaults["top_k"]),
            model=str(defaults["model"]),
            model_version=str(defaults["model_version"]),
        ),
        local_sns_tap=render_template(LOCAL_SNS_TAP, variables),
        local_events_tap=render_template(LOCAL_EVENTS_TAP, variables),
        local_lambda=_local_lambda(raw.get("local", {}), functions),
        trigger_buffer=TriggerBuffer(
            queue=_render_value(raw["trigger_buffer"]["queue"], variables),
            dlq=_render_value(raw["trigger_buffer"]["dlq"], variables),
            pipe=_render_value(raw["trigger_buffer"]["pipe"], variables),
            default_mode=str(raw["trigger_buffer"]["default_mode"]),
            modes=tuple(raw["trigger_buffer"]["modes"]),
            batch_size=int(raw["settings"]["MAX_BATCH_OBJECTS"]),
            batching_window_s=int(raw["trigger_buffer"]["batching_window_s"]),
            visibility_timeout_s=int(raw["trigger_buffer"]["visibility_timeout_s"]),
            max_receive_count=int(raw["trigger_buffer"]["max_receive_count"]),
            input_template=str(raw["trigger_buffer"]["input_template"]),
        ),
        trigger_target=TriggerTarget(
            id=str(raw["trigger_target"]["id"]),
            maximum_event_age_s=int(raw["trigger_target"]["maximum_event_age_s"]),
            maximum_retry_attempts=int(raw["trigger_target"]["maximum_retry_attempts"]),
        ),
        status_rule=StatusRule(
            rule=_render_value(status["rule"], variables),
            target_id=str(status["target_id"]),
            dlq=_render_value(status["dlq"], variables),
            pattern_json=json.dumps(_render_value(status["pattern"], status_vars), sort_keys=True),
            input_paths=MappingProxyType(dict(status["input_paths"])),
            input_template=str(status["input_template"]),
            maximum_event_age_s=int(status["maximum_event_age_s"]),
            maximum_retry_attempts=int(status["maximum_retry_attempts"]),
        ),
        backfill=Backfill(
            state_machine=_render_value(raw["backfill"]["state_machine"], variables),
            definition_path=REPO_ROOT / raw["backfill"]["definition"],
            max_concurrency=int(raw["backfill"]["max_concurrency"]),
            tolerated_failure_percentage=float(raw["backfill"]["tolerated_failure_percentage"]),
            results_prefix=str(raw["backfill"]["results_prefix"]),
        ),
        keep_warm_schedule=_render_value(raw["keep_warm"]["schedule"], function_vars),
        image_repository=_render_value(raw["image_repository"], variables),
    )


def _local_lambda(raw: Mapping[str, Any], functions: Mapping[str, FunctionSpec]) -> LocalLambda:
    limits = {key: int(raw.get("max_environments", {}).get(key, 2)) for key in functions}
    bad = [f"{key}={value}" for key, value in limits.items() if value < 1]
    if bad:
        raise ValueError(f"stack.json local.max_environments must be >= 1: {', '.join(bad)}")
    return LocalLambda(
        max_environments=MappingProxyType(limits),
        idle_environment_seconds=float(raw.get("idle_environment_seconds", 300)),
    )


def function_environment(resources: Resources, function_key: str, *, queue_url: str | None = None) -> dict[str, str]:
    """Exactly the variables stack.json lists for ``function_key``, with this stack's values
    (stack.json ``function_environment`` and ``settings``; Terraform renders the same patterns).

    ``queue_url`` is the URL ``CreateQueue`` returned (defaults to the AWS form of the URL).

    >>> sorted(function_environment(render_resources(), "sink"))[:2]
    ['OUTPUT_BUCKET', 'OUTPUT_PREFIX']
    """
    stack_values = {
        **{f"{key}_bucket": bucket for key, bucket in resources.buckets.items()},
        "input_key_prefix": "",  # the local stack owns its whole input bucket
        "table": resources.table,
        "claims_table": resources.claims.table,
        "topic_arn": resources.topic_arn,
        "queue_url": queue_url or resources.queue_url,
        "event_bus": resources.event_bus,
    }
    values = {name: render_template(pattern, stack_values) for name, pattern in resources.environment.items()}
    values.update(resources.settings)
    names = resources.functions[function_key].environment
    unknown = [name for name in names if name not in values]
    if unknown:
        raise KeyError(f"stack.json gives {function_key} variable(s) with no known value: {', '.join(unknown)}")
    return {name: values[name] for name in names}


def asl_values(resources: Resources, function_arns: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values of every placeholder in ``pipeline.asl.json`` (function ARNs default to AWS's form)."""
    arns = {key: resources.function_arn(key) for key in resources.functions}
    arns.update(function_arns or {})
    values = {spec.function_arn_placeholder: arns[key] for key, spec in resources.functions.items()}
    values.update(
        {
            "DefaultSinks": ",".join(resources.defaults.sinks),
            "DefaultTopK": str(resources.defaults.top_k),
            "DefaultModel": resources.defaults.model,
            "DefaultModelVersion": resources.defaults.model_version,
        }
    )
    return values


__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_REGION",
    "Backfill",
    "Claims",
    "Defaults",
    "FunctionSpec",
    "LocalLambda",
    "Resources",
    "StatusRule",
    "TemplateError",
    "TriggerBuffer",
    "TriggerTarget",
    "asl_values",
    "function_environment",
    "render_asl",
    "render_resources",
    "render_template",
]
