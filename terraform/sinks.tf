################################################################################
# Sinks (each deployed only when listed in var.sinks; the output bucket is in storage.tf).
# Names from stack.json; the sink function writes one record per image to each requested sink,
# with idempotent keys, so a redelivered execution overwrites rather than duplicates.
################################################################################

# One item per input object version: object = "s3://<bucket>/<key>", version = its version id.
resource "aws_dynamodb_table" "this" {
  count = local.sink_enabled.dynamodb ? 1 : 0

  name                        = local.names.table
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "object"
  range_key                   = "version"
  deletion_protection_enabled = !var.force_destroy

  attribute {
    name = "object"
    type = "S"
  }

  attribute {
    name = "version"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  # enabled = true: the AWS-managed key (aws/dynamodb), or kms_key_arn when given.
  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }
}

resource "aws_sns_topic" "this" {
  count = local.sink_enabled.sns ? 1 : 0

  name              = local.names.topic
  kms_master_key_id = var.kms_key_arn != null ? var.kms_key_arn : "alias/aws/sns"
}

resource "aws_sqs_queue" "this" {
  count = local.sink_enabled.sqs ? 1 : 0

  name                              = local.names.queue
  message_retention_seconds         = 345600 # 4 days
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn != null ? 300 : null

  # A record a consumer fails to process 5 times moves to the dead-letter queue.
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[0].arn
    maxReceiveCount     = 5
  })
}

resource "aws_sqs_queue" "dlq" {
  count = local.sink_enabled.sqs ? 1 : 0

  name                              = local.derived_names.queue_dlq
  message_retention_seconds         = 1209600 # 14 days, the maximum
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn != null ? 300 : null
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  count = local.sink_enabled.sqs ? 1 : 0

  queue_url = aws_sqs_queue.dlq[0].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.this[0].arn]
  })
}

# Prediction events: stack.json prediction_events (source "inferpipe", detail-type "Image Classified").
# TLS only (tls.tf): nobody may use the predictions queue, its dead-letter queue or the topic over
# plain HTTP. The topic's policy replaces SNS's default one; same-account publishers and
# subscribers are authorised by their IAM policies (the sink role's sink-sns policy).
locals {
  sink_queues = local.sink_enabled.sqs ? { sink_queue = aws_sqs_queue.this[0], sink_dlq = aws_sqs_queue.dlq[0] } : {}
}

resource "aws_sqs_queue_policy" "sink_queue" {
  for_each = local.sink_queues

  queue_url = each.value.id
  policy    = data.aws_iam_policy_document.tls_only[each.key].json
}

resource "aws_sns_topic_policy" "sink_topic" {
  count = local.sink_enabled.sns ? 1 : 0

  arn    = aws_sns_topic.this[0].arn
  policy = data.aws_iam_policy_document.tls_only["sink_topic"].json
}

resource "aws_cloudwatch_event_bus" "this" {
  count = local.sink_enabled.eventbridge ? 1 : 0

  name = local.names.event_bus
}
