# Every name comes from config/stack.json, the one definition the local stack
# (inferpipe/stack/resources.py) and the tests read too. Its ${...} patterns are rendered with
# templatestring() over the same variables spec.render_resources() uses, so a name never appears
# twice. This file depends on variables and stack.json only (account, region and partition come
# from context.tf): tests/infra evaluates it with real Terraform core, no AWS provider needed.
locals {
  stack = jsondecode(file("${path.module}/../config/stack.json"))

  # The sinks the sink function can write to, in stack.json's order (functions/common/stack.py
  # reads the same list; tests/infra checks the sink function has a writer for each).
  known_sinks = [for sink in local.stack.sinks.known : sink.name]

  prefix = var.prefix != null ? var.prefix : local.stack.prefix

  # Deployment defaults, each overridable by a variable; a manual request may override them again.
  defaults = {
    sinks         = var.sinks != null ? var.sinks : tolist(local.stack.defaults.sinks)
    top_k         = var.default_top_k != null ? var.default_top_k : local.stack.defaults.top_k
    model         = var.default_model != null ? var.default_model : local.stack.defaults.model
    model_version = var.default_model_version != null ? var.default_model_version : local.stack.defaults.model_version
  }
  sink_enabled = { for sink in local.known_sinks : sink => contains(local.defaults.sinks, sink) }

  # ---------------------------------------------------------------- names (stack.json patterns)

  # The placeholders stack.json's patterns may use, as in spec.render_resources().
  name_vars = {
    prefix                = local.prefix
    account_id            = local.account_id
    region                = local.region
    default_model         = local.defaults.model
    default_model_version = local.defaults.model_version
  }
  buckets = { for key, pattern in local.stack.buckets : key => templatestring(pattern, local.name_vars) }
  # Later patterns may also name a bucket: ${input_bucket}, ${models_bucket}, ...
  name_vars_with_buckets = merge(local.name_vars, { for key, bucket in local.buckets : "${key}_bucket" => bucket })

  names = {
    table            = templatestring(local.stack.table, local.name_vars_with_buckets)
    claims_table     = templatestring(local.stack.claims.table, local.name_vars_with_buckets)
    topic            = templatestring(local.stack.topic, local.name_vars_with_buckets)
    queue            = templatestring(local.stack.queue, local.name_vars_with_buckets)
    event_bus        = templatestring(local.stack.event_bus, local.name_vars_with_buckets)
    state_machine    = templatestring(local.stack.state_machine, local.name_vars_with_buckets)
    trigger_rule     = templatestring(local.stack.trigger_rule, local.name_vars_with_buckets)
    trigger_dlq      = templatestring(local.stack.trigger_dlq, local.name_vars_with_buckets)
    image_repository = templatestring(local.stack.image_repository, local.name_vars_with_buckets)
    # The micro-batched trigger (stack.json trigger_buffer) and the backfill state machine.
    trigger_buffer         = templatestring(local.stack.trigger_buffer.queue, local.name_vars_with_buckets)
    trigger_buffer_dlq     = templatestring(local.stack.trigger_buffer.dlq, local.name_vars_with_buckets)
    pipe                   = templatestring(local.stack.trigger_buffer.pipe, local.name_vars_with_buckets)
    backfill_state_machine = templatestring(local.stack.backfill.state_machine, local.name_vars_with_buckets)
  }

  # The message sinks' delivery ledger in the output bucket (functions/common/stack.py LEDGER_PREFIX).
  ledger_prefix = local.stack.output_prefixes.ledger

  settings = merge(
    { for key, value in local.stack.settings : key => templatestring(value, local.name_vars_with_buckets) },
    var.log_level != null ? { POWERTOOLS_LOG_LEVEL = var.log_level } : {},
  )

  functions = {
    for key, spec in local.stack.functions : key => {
      name                    = templatestring(spec.name, local.name_vars_with_buckets)
      command                 = spec.command
      environment             = tolist(spec.environment)
      memory_mb               = try(var.functions[key].memory_mb, null) != null ? var.functions[key].memory_mb : spec.memory_mb
      timeout_s               = try(var.functions[key].timeout_s, null) != null ? var.functions[key].timeout_s : spec.timeout_s
      ephemeral_storage_mb    = try(var.functions[key].ephemeral_storage_mb, 512)
      reserved_concurrency    = try(var.functions[key].reserved_concurrency, null)
      provisioned_concurrency = try(var.functions[key].provisioned_concurrency, 0)
    }
  }

  # ---------------------------------------------------------------- trigger mode

  # "batched" (default): the rule sends to an SQS buffer queue an EventBridge Pipe drains, starting
  # one execution per batch of up to batch_size objects; "direct": the rule starts one execution per
  # object. The variables override stack.json's trigger_buffer (variables.tf validates them).
  trigger = {
    mode                 = var.trigger_mode != null ? var.trigger_mode : local.stack.trigger_buffer.default_mode
    batch_size           = var.trigger_batch_size != null ? var.trigger_batch_size : tonumber(local.settings.MAX_BATCH_OBJECTS)
    batching_window_s    = var.trigger_batching_window_s != null ? var.trigger_batching_window_s : local.stack.trigger_buffer.batching_window_s
    visibility_timeout_s = local.stack.trigger_buffer.visibility_timeout_s
    max_receive_count    = local.stack.trigger_buffer.max_receive_count
    # Applied by the pipe to each SQS message of a batch, as the local stack's pipe applies it
    # (inferpipe/local/pipes.py): the element the state machine reads, {"detail": {bucket, object}}.
    input_template = local.stack.trigger_buffer.input_template
  }
  trigger_batched = local.trigger.mode == "batched"
  # The rule's one target (stack.json trigger_target), its retry policy overridable by variables.
  trigger_target = {
    id                     = local.stack.trigger_target.id
    maximum_event_age_s    = var.trigger_maximum_event_age_seconds != null ? var.trigger_maximum_event_age_seconds : local.stack.trigger_target.maximum_event_age_s
    maximum_retry_attempts = var.trigger_maximum_retry_attempts != null ? var.trigger_maximum_retry_attempts : local.stack.trigger_target.maximum_retry_attempts
  }

  # The backfill state machine writes its per-batch results (ResultWriter) to the output bucket,
  # which exists only with the s3 sink: without it there is no backfill state machine.
  backfill_enabled = local.sink_enabled.s3

  # Names derived from the functions' may also use ${<function>_function} (stack.json keep_warm, iam.roles).
  function_name_vars = merge(local.name_vars_with_buckets, { for key, function in local.functions : "${key}_function" => function.name })

  # Resources only Terraform creates (the local stack has no alarms or schedules), named after the
  # stack's names.
  derived_names = {
    queue_dlq                        = "${local.names.queue}-dlq"
    alarm_topic                      = "${local.prefix}-alarms"
    keep_warm                        = templatestring(local.stack.keep_warm.schedule, local.function_name_vars)
    state_machine_log_group          = "/aws/vendedlogs/states/${local.names.state_machine}"
    backfill_state_machine_log_group = "/aws/vendedlogs/states/${local.names.backfill_state_machine}"
  }
  # Every role stack.json iam.roles defines, named by its pattern (inferpipe/stack/policies.py role_names).
  role_name_vars = merge(local.function_name_vars, local.names, { keep_warm = local.derived_names.keep_warm })
  role_names     = { for key, role in local.stack.iam.roles : key => templatestring(role.name, local.role_name_vars) }

  # The state machine calls each function through this alias (stack.json function_alias).
  function_alias = local.stack.function_alias.name
  # Lambda's own log group names, created ahead of the functions with a retention.
  function_log_groups = { for key, function in local.functions : key => "/aws/lambda/${function.name}" }

  # ---------------------------------------------------------------- ARNs and IAM policies

  # ARNs built from names (as spec.Resources.arn does), so that the IAM policies depend on nothing
  # but names: no dependency cycle (the state machine's policy names the functions, whose creation
  # waits for their policies) and the same documents are rendered by tests/infra without AWS.
  # The check block in iam.tf compares them with the created resources' ARNs.
  arn_base = {
    for service in ["dynamodb", "events", "lambda", "logs", "pipes", "sns", "sqs", "states"] :
    service => "arn:${local.partition}:${service}:${local.region}:${local.account_id}"
  }
  arns = {
    buckets          = { for key, bucket in local.buckets : key => "arn:${local.partition}:s3:::${bucket}" }
    table            = "${local.arn_base.dynamodb}:table/${local.names.table}"
    claims_table     = "${local.arn_base.dynamodb}:table/${local.names.claims_table}"
    topic            = "${local.arn_base.sns}:${local.names.topic}"
    queue            = "${local.arn_base.sqs}:${local.names.queue}"
    event_bus        = "${local.arn_base.events}:event-bus/${local.names.event_bus}"
    state_machine    = "${local.arn_base.states}:stateMachine:${local.names.state_machine}"
    trigger_rule     = "${local.arn_base.events}:rule/${local.names.trigger_rule}"
    functions        = { for key, function in local.functions : key => "${local.arn_base.lambda}:function:${function.name}" }
    function_aliases = { for key, function in local.functions : key => "${local.arn_base.lambda}:function:${function.name}:${local.function_alias}" }
    log_groups       = { for key, name in local.function_log_groups : key => "${local.arn_base.logs}:log-group:${name}" }
    # Built whether or not the trigger mode / output bucket creates them: the policies name them.
    trigger_buffer         = "${local.arn_base.sqs}:${local.names.trigger_buffer}"
    trigger_buffer_dlq     = "${local.arn_base.sqs}:${local.names.trigger_buffer_dlq}"
    pipe                   = "${local.arn_base.pipes}:pipe/${local.names.pipe}"
    backfill_state_machine = "${local.arn_base.states}:stateMachine:${local.names.backfill_state_machine}"
  }

  # The values of every placeholder of terraform/policies/*.json.tftpl (inferpipe/stack/policies.py
  # policy_values() gives the local stack's): each function's ARN (its alias) and log group ARN under
  # the placeholder names stack.json gives, and the stack's other ARNs and names.
  function_policy_vars = merge(
    { for key, spec in local.stack.functions : spec.placeholders.function_arn => local.arns.function_aliases[key] },
    { for key, spec in local.stack.functions : spec.placeholders.log_group_arn => local.arns.log_groups[key] },
  )
  policy_vars = merge(local.function_policy_vars, {
    Partition       = local.partition
    InputBucket     = local.buckets.input
    InputKeyPrefix  = var.input_key_prefix
    ModelBucket     = local.buckets.models
    WorkBucket      = local.buckets.work
    WorkPrefix      = local.settings.WORK_PREFIX
    OutputBucket    = local.buckets.output
    OutputPrefix    = local.settings.OUTPUT_PREFIX
    LedgerPrefix    = local.stack.output_prefixes.ledger
    FailurePrefix   = local.stack.output_prefixes.failures
    TableArn        = local.arns.table
    ClaimsTableArn  = local.arns.claims_table
    TopicArn        = local.arns.topic
    QueueArn        = local.arns.queue
    EventBusArn     = local.arns.event_bus
    StateMachineArn = local.arns.state_machine
    KmsKeyArn       = var.kms_key_arn != null ? var.kms_key_arn : ""
    # pipe and backfill templates
    Region                   = local.region
    AccountId                = local.account_id
    StateMachineName         = local.names.state_machine
    TriggerBufferQueueArn    = local.arns.trigger_buffer
    BackfillStateMachineArn  = local.arns.backfill_state_machine
    BackfillStateMachineName = local.names.backfill_state_machine
    BackfillResultsPrefix    = local.stack.backfill.results_prefix
  })

  # Which of stack.json's iam.roles this deployment has, by their "when" (inferpipe/stack/policies.py
  # makes the same choice): the trigger mode picks the rule target's (direct) or the pipe's
  # (batched) role, the output bucket brings the backfill's, keep_warm_enabled the schedule's.
  role_enabled = {
    always    = true
    direct    = !local.trigger_batched
    batched   = local.trigger_batched
    backfill  = local.backfill_enabled
    keep_warm = var.keep_warm_enabled
  }
  # The policy templates each role gets, [] for a role this deployment does not have.
  # inferpipe/stack/policies.py role_policy_templates() renders the same; tests/infra compares them.
  role_policy_templates = {
    for key, role in local.stack.iam.roles : key => local.role_enabled[role.when] ? concat(
      role.policies,
      role.sink_policies ? [for sink in local.known_sinks : "sink-${sink}" if local.sink_enabled[sink]] : [],
      role.xray && var.xray_tracing ? ["xray"] : [],
      role.kms && var.kms_key_arn != null ? ["kms"] : [],
    ) : []
  }
  # role => template => policy document (JSON text), attached in iam.tf.
  role_policies = {
    for role, templates in local.role_policy_templates : role => {
      for template in templates : template => templatefile("${path.module}/policies/${template}.json.tftpl", local.policy_vars)
    }
  }

  # Role => the service that assumes it, for the roles this deployment has (inferpipe/stack/policies.py
  # role_services() agrees).
  role_services = { for key, role in local.stack.iam.roles : key => role.service if local.role_enabled[role.when] }

  # Confused-deputy guards of each role's trust policy (iam.tf): aws:SourceAccount where the service
  # sets it when it assumes the role, and aws:SourceArn where the role serves one known resource.
  #   Step Functions: ArnLike on the state machine (":*" and "/*" also cover its versions, aliases and
  #   Distributed Map runs), as https://docs.aws.amazon.com/step-functions/latest/dg/procedure-create-iam-role.html
  #   recommends. Pipes: StringEquals on the pipe's ARN, as
  #   https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-permissions.html shows.
  role_source_arns = {
    state_machine = { test = "ArnLike", values = [local.arns.state_machine, "${local.arns.state_machine}:*", "${local.arns.state_machine}/*"] }
    backfill      = { test = "ArnLike", values = [local.arns.backfill_state_machine, "${local.arns.backfill_state_machine}:*", "${local.arns.backfill_state_machine}/*"] }
    pipe          = { test = "StringEquals", values = [local.arns.pipe] }
  }
  role_trust_conditions = {
    for role, service in local.role_services : role => concat(
      local.stack.iam.roles[role].trust_source_account ? [
        { test = "StringEquals", variable = "aws:SourceAccount", values = tolist([local.account_id]) }
      ] : [],
      contains(keys(local.role_source_arns), role) ? [
        { test = local.role_source_arns[role].test, variable = "aws:SourceArn", values = tolist(local.role_source_arns[role].values) }
      ] : [],
    )
  }

  # The state machine definitions named by stack.json, filled by templatefile() in orchestration.tf.
  state_machine_definition_file = "${path.module}/../${local.stack.state_machine_definition}"
  backfill_definition_file      = "${path.module}/../${local.stack.backfill.definition}"

  # Each function's task TimeoutSeconds in that definition (tasks at the top level or in a Map),
  # found by its ARN placeholder, e.g. "${PreprocessFunctionArn}" (stack.json functions.*.placeholders).
  # A function must time out before its task does (before the shortest, when several tasks run it,
  # e.g. the sink's Deliver and RecordFailure): var.functions is validated against these.
  asl        = jsondecode(file(local.state_machine_definition_file))
  asl_states = merge(local.asl.States, merge([for state in values(local.asl.States) : try(state.ItemProcessor.States, {})]...))
  asl_task_timeouts = {
    for name, state in local.asl_states : state.Resource => state.TimeoutSeconds...
    if try(state.Type, "") == "Task" && can(state.TimeoutSeconds)
  }
  function_task_timeouts = {
    for key, spec in local.stack.functions : key => min(lookup(local.asl_task_timeouts, "$${${spec.placeholders.function_arn}}", [900])...)
  }

  # The image repository named by stack.json, in this account and region.
  image_repository_url = "${local.account_id}.dkr.ecr.${local.region}.${local.dns_suffix}/${local.names.image_repository}"

  # ---------------------------------------------------------------- trigger pattern

  # stack.json's pattern with ${input_bucket} filled (templatestring needs a named template).
  trigger_pattern_template = jsonencode(local.stack.trigger_pattern)
  trigger_pattern_base     = jsondecode(templatestring(local.trigger_pattern_template, local.name_vars_with_buckets))

  # Optional key filters, ANDed with the base pattern. Prefix alone: [{prefix}]; suffixes alone:
  # [{suffix}, ...] (any of them); both: one wildcard per suffix, "<prefix>*<suffix>", with '*' and
  # '\' escaped as EventBridge wildcards require.
  key_filter_operator = var.input_key_prefix != "" && length(var.input_key_suffixes) > 0 ? "wildcard" : (var.input_key_prefix != "" ? "prefix" : "suffix")
  key_filter_values = (
    local.key_filter_operator == "wildcard" ? [
      for suffix in var.input_key_suffixes :
      "${replace(replace(var.input_key_prefix, "\\", "\\\\"), "*", "\\*")}*${replace(replace(suffix, "\\", "\\\\"), "*", "\\*")}"
    ] : (local.key_filter_operator == "prefix" ? [var.input_key_prefix] : var.input_key_suffixes)
  )
  key_filter = [for value in local.key_filter_values : tomap({ (local.key_filter_operator) = value })]

  trigger_pattern_json = length(local.key_filter) == 0 ? jsonencode(local.trigger_pattern_base) : jsonencode(merge(
    local.trigger_pattern_base,
    { detail = merge(local.trigger_pattern_base.detail, { object = { key = local.key_filter } }) },
  ))
}
