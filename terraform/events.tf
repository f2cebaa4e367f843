################################################################################
# Trigger: the input bucket's "Object Created" events (stack.json's trigger_pattern, plus the
# optional key filters) start one execution each, through a role. Events EventBridge cannot
# deliver after its retries land in the trigger dead-letter queue.
################################################################################

resource "aws_cloudwatch_event_rule" "this" {
  name          = local.names.trigger_rule
  description   = "Start ${local.names.state_machine} for every object created in ${local.buckets.input}"
  event_pattern = local.trigger_pattern_json
  state         = "ENABLED"
}

resource "aws_cloudwatch_event_target" "this" {
  rule      = aws_cloudwatch_event_rule.this.name
  target_id = "pipeline"
  arn       = aws_sfn_state_machine.this.arn
  role_arn  = aws_iam_role.this["trigger"].arn

  retry_policy {
    maximum_event_age_in_seconds = var.trigger_maximum_event_age_seconds
    maximum_retry_attempts       = var.trigger_maximum_retry_attempts
  }

  dead_letter_config {
    arn = aws_sqs_queue.trigger_dlq.arn
  }
}

resource "aws_sqs_queue" "trigger_dlq" {
  name                              = local.names.trigger_dlq
  message_retention_seconds         = 1209600 # 14 days, the maximum: time to notice, fix and redrive
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn != null ? 300 : null
}

data "aws_iam_policy_document" "trigger_dlq" {
  statement {
    sid       = "EventBridgeDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.trigger_dlq.arn]

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

resource "aws_sqs_queue_policy" "trigger_dlq" {
  queue_url = aws_sqs_queue.trigger_dlq.id
  policy    = data.aws_iam_policy_document.trigger_dlq.json
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
