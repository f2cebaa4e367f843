################################################################################
# TLS only: every queue and topic the stack creates denies any request made without TLS
# (aws:SecureTransport false), whoever makes it. Each one's policy is, or includes through
# source_policy_documents, its statement here. The buckets do the same for S3 (storage.tf).
################################################################################

locals {
  sqs_all = ["sqs:*"]
  sns_use = ["sns:Publish", "sns:Subscribe"]

  tls_only = merge(
    { for key, queue in aws_sqs_queue.event_dlq : "event_dlq_${key}" => { arn = queue.arn, actions = local.sqs_all } },
    local.trigger_batched ? {
      trigger_buffer     = { arn = aws_sqs_queue.trigger_buffer[0].arn, actions = local.sqs_all }
      trigger_buffer_dlq = { arn = aws_sqs_queue.trigger_buffer_dlq[0].arn, actions = local.sqs_all }
    } : {},
    local.sink_enabled.sqs ? {
      sink_queue = { arn = aws_sqs_queue.this[0].arn, actions = local.sqs_all }
      sink_dlq   = { arn = aws_sqs_queue.dlq[0].arn, actions = local.sqs_all }
    } : {},
    local.sink_enabled.sns ? { sink_topic = { arn = aws_sns_topic.this[0].arn, actions = local.sns_use } } : {},
    { alarms_topic = { arn = aws_sns_topic.alarms.arn, actions = local.sns_use } },
  )
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.tls_only

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = each.value.actions
    resources = [each.value.arn]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
