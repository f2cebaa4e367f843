################################################################################
# Alarms: failed and timed-out executions, function errors and throttles, dead letters (the
# trigger's, the buffer's in batched mode, the predictions queue's). All
# notify one SNS topic; subscribe to it with var.alarm_email or through the alarm_topic_arn output.
################################################################################

locals {
  alarm_actions = [aws_sns_topic.alarms.arn]

  function_alarms = merge([
    for key, function in local.functions : {
      for metric in ["Errors", "Throttles"] : "${key}-${lower(metric)}" => {
        function = function.name
        metric   = metric
      }
    }
  ]...)

  dead_letter_queues = merge(
    { trigger = aws_sqs_queue.event_dlq["trigger"].name, execution-status = aws_sqs_queue.event_dlq["status"].name },
    local.trigger_batched ? { trigger-buffer = aws_sqs_queue.trigger_buffer_dlq[0].name } : {},
    local.sink_enabled.sqs ? { predictions = aws_sqs_queue.dlq[0].name } : {},
  )
}

resource "aws_sns_topic" "alarms" {
  #checkov:skip=CKV_AWS_26:CloudWatch cannot publish to a topic encrypted with the AWS-managed alias/aws/sns key (its key policy cannot grant cloudwatch.amazonaws.com), so without var.kms_key_arn the alarm topic stays unencrypted; alarm notifications carry metric names and thresholds only.
  name              = local.derived_names.alarm_topic
  kms_master_key_id = var.kms_key_arn
}

# The topic's policy replaces SNS's default one: this account's alarms may publish (and, tls.tf,
# nothing may use the topic without TLS).
data "aws_iam_policy_document" "alarms_topic" {
  source_policy_documents = [data.aws_iam_policy_document.tls_only["alarms_topic"].json]

  statement {
    sid       = "CloudWatchAlarms"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:*"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.alarms_topic.json
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email != null ? 1 : 0

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

resource "aws_cloudwatch_metric_alarm" "executions" {
  for_each = {
    failed    = "ExecutionsFailed"
    timed-out = "ExecutionsTimedOut"
  }

  alarm_name          = "${local.names.state_machine}-executions-${each.key}"
  alarm_description   = "${local.names.state_machine}: at least one execution ${replace(each.key, "-", " ")} (see the execution's error and cause, or its log group ${aws_cloudwatch_log_group.state_machine.name})."
  namespace           = "AWS/States"
  metric_name         = each.value
  dimensions          = { StateMachineArn = aws_sfn_state_machine.this.arn }
  statistic           = "Sum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "function" {
  for_each = local.function_alarms

  alarm_name          = "${each.value.function}-${lower(each.value.metric)}"
  alarm_description   = "${each.value.function}: ${each.value.metric} >= 1 in ${var.alarm_period_seconds} s."
  namespace           = "AWS/Lambda"
  metric_name         = each.value.metric
  dimensions          = { FunctionName = each.value.function }
  statistic           = "Sum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions

  depends_on = [aws_lambda_function.this]
}

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  for_each = local.dead_letter_queues

  alarm_name          = "${each.value}-not-empty"
  alarm_description   = "${each.value} holds messages that could not be delivered or processed: inspect them, fix the cause and redrive."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}
