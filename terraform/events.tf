################################################################################
# Trigger: the input bucket's "Object Created" events (stack.json's trigger_pattern, plus the
# optional key filters) go to the rule's one target, by var.trigger_mode:
#   batched (default)  rule -> SQS buffer queue -> EventBridge Pipe -> one execution per batch
#   direct             rule -> one execution per object, through the trigger role
# Either way, events EventBridge cannot deliver after its retries land in the trigger dead-letter
# queue; in batched mode, messages the pipe fails to hand over max_receive_count times land in the
# buffer's own dead-letter queue.
################################################################################

resource "aws_cloudwatch_event_rule" "this" {
  name          = local.names.trigger_rule
  description   = local.trigger_batched ? "Buffer every object created in ${local.buckets.input} for ${local.names.state_machine}, started in batches by ${local.names.pipe}" : "Start ${local.names.state_machine} for every object created in ${local.buckets.input}"
  event_pattern = local.trigger_pattern_json
  state         = "ENABLED"
}

# One target whatever the mode, so switching modes updates it in place (never a moment with no
# target). An SQS target takes no role: the buffer queue's policy lets this rule send.
resource "aws_cloudwatch_event_target" "this" {
  rule      = aws_cloudwatch_event_rule.this.name
  target_id = local.trigger_target.id
  arn       = local.trigger_batched ? aws_sqs_queue.trigger_buffer[0].arn : aws_sfn_state_machine.this.arn
  role_arn  = local.trigger_batched ? null : aws_iam_role.this["trigger"].arn

  retry_policy {
    maximum_event_age_in_seconds = local.trigger_target.maximum_event_age_s
    maximum_retry_attempts       = local.trigger_target.maximum_retry_attempts
  }

  dead_letter_config {
    arn = aws_sqs_queue.event_dlq["trigger"].arn
  }

  # The rule may send only once the queue policy allows it.
  depends_on = [aws_sqs_queue_policy.trigger_buffer]
}

################################################################################
# Micro-batched trigger (trigger_mode = "batched"): the buffer queue, its dead-letter queue and
# the pipe that drains it into the state machine. None of these exist in direct mode.
################################################################################

resource "aws_sqs_queue" "trigger_buffer" {
  count = local.trigger_batched ? 1 : 0

  name = local.names.trigger_buffer
  # Hidden this long while the pipe hands a batch to Step Functions; FIRE_AND_FORGET returns as
  # soon as the execution has started, far within it.
  visibility_timeout_seconds        = local.trigger.visibility_timeout_s
  message_retention_seconds         = 345600 # 4 days
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn != null ? 300 : null

  # A message the pipe could not deliver max_receive_count times (e.g. StartExecution refused)
  # moves to the buffer's dead-letter queue instead of being retried forever.
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.trigger_buffer_dlq[0].arn
    maxReceiveCount     = local.trigger.max_receive_count
  })
}

resource "aws_sqs_queue" "trigger_buffer_dlq" {
  count = local.trigger_batched ? 1 : 0

  name                              = local.names.trigger_buffer_dlq
  message_retention_seconds         = 1209600 # 14 days, the maximum
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn != null ? 300 : null
}

resource "aws_sqs_queue_redrive_allow_policy" "trigger_buffer_dlq" {
  count = local.trigger_batched ? 1 : 0

  queue_url = aws_sqs_queue.trigger_buffer_dlq[0].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.trigger_buffer[0].arn]
  })
}

# Only the trigger rule may send to the buffer (and, tls.tf, nobody may use it without TLS).
data "aws_iam_policy_document" "trigger_buffer" {
  count = local.trigger_batched ? 1 : 0

  source_policy_documents = [data.aws_iam_policy_document.tls_only["trigger_buffer"].json]

  statement {
    sid       = "TriggerRuleEvents"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.trigger_buffer[0].arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.this.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "trigger_buffer" {
  count = local.trigger_batched ? 1 : 0

  queue_url = aws_sqs_queue.trigger_buffer[0].id
  policy    = data.aws_iam_policy_document.trigger_buffer[0].json
}

resource "aws_sqs_queue_policy" "trigger_buffer_dlq" {
  count = local.trigger_batched ? 1 : 0

  queue_url = aws_sqs_queue.trigger_buffer_dlq[0].id
  policy    = data.aws_iam_policy_document.tls_only["trigger_buffer_dlq"].json
}

# The pipe: SQS batches of up to local.trigger.batch_size messages, waiting at most
# local.trigger.batching_window_s after the first
# (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-sqs.html; AWS notes that on a
# low-traffic queue with a batching window a batch may take up to 20 s). The input template is
# applied to each message of a batch and Step Functions receives the whole batch as one JSON array,
# even a batch of one (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-batching-concurrency.html):
# [{"detail": {"bucket": {...}, "object": {...}}}, ...], the input pipeline.asl.json accepts. A
# Standard workflow can only be started FIRE_AND_FORGET
# (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-event-target.html). 100
# elements of ~1 KB each stay well within StartExecution's 256 KB input limit.
resource "aws_pipes_pipe" "trigger" {
  count = local.trigger_batched ? 1 : 0

  name          = local.names.pipe
  description   = "Start ${local.names.state_machine} once per batch of objects created in ${local.buckets.input}"
  role_arn      = aws_iam_role.this["pipe"].arn
  source        = aws_sqs_queue.trigger_buffer[0].arn
  target        = aws_sfn_state_machine.this.arn
  desired_state = "RUNNING"

  source_parameters {
    sqs_queue_parameters {
      batch_size                         = local.trigger.batch_size
      maximum_batching_window_in_seconds = local.trigger.batching_window_s
    }
  }

  target_parameters {
    input_template = local.trigger.input_template

    step_function_state_machine_parameters {
      invocation_type = "FIRE_AND_FORGET"
    }
  }

  # CreatePipe checks the role may read the queue and start the state machine.
  depends_on = [aws_iam_role_policy.this]
}

################################################################################
# Keep-warm (optional): EventBridge Scheduler pings the inference function's live alias with
# {"warmup": true}; the handler loads the default model and returns without a prediction.
################################################################################

resource "aws_scheduler_schedule" "keep_warm" {
  #checkov:skip=CKV_AWS_297:The schedule's only payload is the constant {"warmup": true}; there is nothing for a customer managed key to protect.
  count = var.keep_warm_enabled ? 1 : 0

  name                = local.derived_names.keep_warm
  description         = "Keep one ${local.functions.inference.name} environment warm"
  schedule_expression = var.keep_warm_schedule

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_lambda_alias.this["inference"].arn
    role_arn = aws_iam_role.this["keep_warm"].arn
    input    = jsonencode({ warmup = true })

    retry_policy {
      maximum_retry_attempts       = 0
      maximum_event_age_in_seconds = 60
    }
  }
}

################################################################################
# Failure records for what no Catch sees: Step Functions sends an "Execution Status Change" event
# to the default bus whenever a Standard execution ends
# (https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html). This rule (stack.json
# status_rule) sends the pipeline's FAILED, TIMED_OUT, ABORTED and SUCCEEDED ones to the sink
# function's status recorder (functions/sink/status.py): it records executions that stopped at a
# task (to be redriven), timed out or were stopped, and resolves those records when a redrive
# succeeds. EventBridge invokes Lambda asynchronously; what it cannot deliver within the retry
# policy lands in the dead-letter queue.
################################################################################

locals {
  status_rule = {
    name         = templatestring(local.stack.status_rule.rule, local.name_vars_with_buckets)
    dlq          = templatestring(local.stack.status_rule.dlq, local.name_vars_with_buckets)
    pattern_json = jsonencode(jsondecode(templatestring(jsonencode(local.stack.status_rule.pattern), merge(local.name_vars_with_buckets, { state_machine_arn = local.arns.state_machine }))))
    # The same Default* values the state machine definition gets (orchestration.tf).
    input_template = templatestring(local.stack.status_rule.input_template, {
      DefaultSinks        = join(",", local.defaults.sinks)
      DefaultTopK         = local.defaults.top_k
      DefaultModel        = local.defaults.model
      DefaultModelVersion = local.defaults.model_version
    })
  }
}

resource "aws_cloudwatch_event_rule" "status" {
  name          = local.status_rule.name
  description   = "Record the failures of ${local.names.state_machine} executions that end FAILED, TIMED_OUT or ABORTED, and resolve them when a redrive succeeds"
  event_pattern = local.status_rule.pattern_json
  state         = "ENABLED"
}

resource "aws_cloudwatch_event_target" "status" {
  rule      = aws_cloudwatch_event_rule.status.name
  target_id = local.stack.status_rule.target_id
  arn       = aws_lambda_alias.this["sink"].arn

  input_transformer {
    input_paths    = local.stack.status_rule.input_paths
    input_template = local.status_rule.input_template
  }

  retry_policy {
    maximum_event_age_in_seconds = local.stack.status_rule.maximum_event_age_s
    maximum_retry_attempts       = local.stack.status_rule.maximum_retry_attempts
  }

  dead_letter_config {
    arn = aws_sqs_queue.event_dlq["status"].arn
  }

  depends_on = [aws_lambda_permission.status]
}

# Only this rule may invoke the sink function from EventBridge.
resource "aws_lambda_permission" "status" {
  statement_id   = "StatusChangeEvents"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_alias.this["sink"].function_name
  qualifier      = aws_lambda_alias.this["sink"].name
  principal      = "events.amazonaws.com"
  source_arn     = aws_cloudwatch_event_rule.status.arn
  source_account = local.account_id
}

################################################################################
# Dead-letter queues of the two EventBridge rules that start work (the trigger, the status
# recorder): what EventBridge could not deliver within a rule's retry policy. Only that rule's
# events may be sent (and, tls.tf, nobody may use a queue without TLS).
################################################################################

locals {
  event_dlqs = {
    trigger = { name = local.names.trigger_dlq, rule_arn = aws_cloudwatch_event_rule.this.arn }
    status  = { name = local.status_rule.dlq, rule_arn = aws_cloudwatch_event_rule.status.arn }
  }
}

resource "aws_sqs_queue" "event_dlq" {
  for_each = local.event_dlqs

  name                              = each.value.name
  message_retention_seconds         = 1209600 # 14 days, the maximum: time to notice, fix and redrive
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn != null ? 300 : null
}

moved {
  from = aws_sqs_queue.trigger_dlq
  to   = aws_sqs_queue.event_dlq["trigger"]
}

moved {
  from = aws_sqs_queue.status_dlq
  to   = aws_sqs_queue.event_dlq["status"]
}

data "aws_iam_policy_document" "event_dlq" {
  for_each = local.event_dlqs

  source_policy_documents = [data.aws_iam_policy_document.tls_only["event_dlq_${each.key}"].json]

  statement {
    sid       = "EventBridgeDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.event_dlq[each.key].arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [each.value.rule_arn]
    }
  }
}

resource "aws_sqs_queue_policy" "event_dlq" {
  for_each = local.event_dlqs

  queue_url = aws_sqs_queue.event_dlq[each.key].id
  policy    = data.aws_iam_policy_document.event_dlq[each.key].json
}

moved {
  from = aws_sqs_queue_policy.trigger_dlq
  to   = aws_sqs_queue_policy.event_dlq["trigger"]
}

moved {
  from = aws_sqs_queue_policy.status_dlq
  to   = aws_sqs_queue_policy.event_dlq["status"]
}
