################################################################################
# The whole stack in one object, for the CLI (terraform output -json inferpipe)
################################################################################

output "inferpipe" {
  description = "Everything the inferpipe CLI needs to use this deployment with the usual AWS profile and region settings: names, ARNs and URLs (null for a sink that is not deployed), enabled sinks and defaults."
  value = {
    prefix                     = local.prefix
    account_id                 = local.account_id
    region                     = local.region
    buckets                    = { for key, bucket in local.buckets : key => try(aws_s3_bucket.this[key].bucket, null) }
    table                      = try(aws_dynamodb_table.this[0].name, null)
    claims_table               = aws_dynamodb_table.claims.name
    topic_arn                  = try(aws_sns_topic.this[0].arn, null)
    queue_url                  = try(aws_sqs_queue.this[0].url, null)
    event_bus                  = try(aws_cloudwatch_event_bus.this[0].name, null)
    state_machine_arn          = aws_sfn_state_machine.this.arn
    state_machine_type         = aws_sfn_state_machine.this.type
    functions                  = { for key, function in aws_lambda_function.this : key => function.function_name }
    trigger_rule               = aws_cloudwatch_event_rule.this.name
    trigger_dlq_url            = aws_sqs_queue.event_dlq["trigger"].url
    status_rule                = aws_cloudwatch_event_rule.status.name
    status_dlq_url             = aws_sqs_queue.event_dlq["status"].url
    trigger_mode               = local.trigger.mode
    trigger_buffer_url         = try(aws_sqs_queue.trigger_buffer[0].url, null)
    pipe_name                  = try(aws_pipes_pipe.trigger[0].name, null)
    backfill_state_machine_arn = try(aws_sfn_state_machine.backfill[0].arn, null)
    sinks                      = local.defaults.sinks
    defaults = {
      top_k         = local.defaults.top_k
      model         = local.defaults.model
      model_version = local.defaults.model_version
    }
  }
}

################################################################################
# Buckets
################################################################################

output "input_bucket_name" {
  description = "Bucket to upload images to; every object created there is classified."
  value       = aws_s3_bucket.this["input"].bucket
}

output "models_bucket_name" {
  description = "Bucket of published model packages (models/<name>/versions/<version>/..., models/<name>/aliases/<alias>.json)."
  value       = aws_s3_bucket.this["models"].bucket
}

output "work_bucket_name" {
  description = "Bucket of intermediate tensors (expire after var.work_expiration_days)."
  value       = aws_s3_bucket.this["work"].bucket
}

output "output_bucket_name" {
  description = "Bucket of prediction records (the s3 sink); null without that sink."
  value       = try(aws_s3_bucket.this["output"].bucket, null)
}

################################################################################
# Sinks
################################################################################

output "predictions_table_name" {
  description = "DynamoDB table of prediction records (the dynamodb sink); null without that sink."
  value       = try(aws_dynamodb_table.this[0].name, null)
}

output "predictions_topic_arn" {
  description = "SNS topic of prediction records (the sns sink); null without that sink."
  value       = try(aws_sns_topic.this[0].arn, null)
}

output "predictions_queue_url" {
  description = "SQS queue of prediction records (the sqs sink); null without that sink."
  value       = try(aws_sqs_queue.this[0].url, null)
}

output "predictions_dlq_url" {
  description = "Dead-letter queue of the predictions queue; null without the sqs sink."
  value       = try(aws_sqs_queue.dlq[0].url, null)
}

output "predictions_event_bus_name" {
  description = "EventBridge bus receiving prediction events (the eventbridge sink); null without that sink."
  value       = try(aws_cloudwatch_event_bus.this[0].name, null)
}

output "sinks" {
  description = "The deployed sinks, delivered to by default."
  value       = local.defaults.sinks
}

################################################################################
# Orchestration, functions, trigger
################################################################################

output "state_machine_arn" {
  description = "ARN of the pipeline state machine (start a manual execution with {\"bucket\", \"key\"})."
  value       = aws_sfn_state_machine.this.arn
}

output "state_machine_log_group_name" {
  description = "CloudWatch log group of the state machine's executions."
  value       = aws_cloudwatch_log_group.state_machine.name
}

output "function_names" {
  description = "Lambda function names by stack.json key (preprocess, inference, sink)."
  value       = { for key, function in aws_lambda_function.this : key => function.function_name }
}

output "function_alias_arns" {
  description = "ARNs of the functions' live aliases, which the state machine invokes."
  value       = { for key, alias in aws_lambda_alias.this : key => alias.arn }
}

output "function_log_group_names" {
  description = "CloudWatch log groups of the functions."
  value       = { for key, group in aws_cloudwatch_log_group.function : key => group.name }
}

output "image_uri" {
  description = "Container image the functions run."
  value       = local.image_uri
}

output "ecr_repository_url" {
  description = "URL of the image repository created here; null with create_ecr_repository = false."
  value       = try(aws_ecr_repository.this[0].repository_url, null)
}

output "trigger_rule_name" {
  description = "EventBridge rule (default bus) that starts the state machine for new input objects."
  value       = aws_cloudwatch_event_rule.this.name
}

output "trigger_dlq_url" {
  description = "Dead-letter queue of trigger events EventBridge could not deliver to the rule's target (the buffer queue, or in direct mode the state machine)."
  value       = aws_sqs_queue.event_dlq["trigger"].url
}

output "trigger_mode" {
  description = "How uploads start the state machine: batched (buffer queue and pipe, one execution per batch) or direct (one execution per upload)."
  value       = local.trigger.mode
}

output "trigger_buffer_queue_url" {
  description = "SQS queue buffering the trigger rule's events for the pipe; null in direct mode."
  value       = try(aws_sqs_queue.trigger_buffer[0].url, null)
}

output "trigger_buffer_dlq_url" {
  description = "Dead-letter queue of buffered events the pipe could not hand to the state machine; null in direct mode."
  value       = try(aws_sqs_queue.trigger_buffer_dlq[0].url, null)
}

output "pipe_arn" {
  description = "EventBridge Pipe starting one execution per batch from the buffer queue; null in direct mode."
  value       = try(aws_pipes_pipe.trigger[0].arn, null)
}

output "backfill_state_machine_arn" {
  description = "ARN of the backfill state machine (`inferpipe backfill s3://BUCKET/PREFIX` starts it); null without the s3 sink, whose output bucket receives its results."
  value       = try(aws_sfn_state_machine.backfill[0].arn, null)
}

################################################################################
# Monitoring
################################################################################

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify; subscribe to it (var.alarm_email does for one address)."
  value       = aws_sns_topic.alarms.arn
}
