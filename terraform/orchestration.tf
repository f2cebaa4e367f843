################################################################################
# The state machine: state_machine/pipeline.asl.json (the file stack.json names), its ${...}
# placeholders filled by templatefile() exactly as the local stack fills them
# (inferpipe.stack.resources.asl_values); $$.Execution.Id and the other "$$." paths pass through.
################################################################################

resource "aws_cloudwatch_log_group" "state_machine" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days): execution logs are operational, not an audit trail; raise it where a year is required.
  #checkov:skip=CKV_AWS_158:Encrypted with var.kms_key_arn when given; otherwise CloudWatch Logs' own encryption at rest, so the stack deploys without a KMS key.
  # Under /aws/vendedlogs/ so Step Functions' log delivery does not grow the account's CloudWatch
  # Logs resource policy with one entry per log group.
  name              = local.derived_names.state_machine_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_sfn_state_machine" "this" {
  name     = local.names.state_machine
  type     = var.state_machine_type
  role_arn = aws_iam_role.this["state_machine"].arn

  # Each function's alias under the placeholder name stack.json gives it, and the deployment defaults.
  definition = templatefile(local.state_machine_definition_file, merge(
    { for key, alias in aws_lambda_alias.this : local.stack.functions[key].placeholders.function_arn => alias.arn },
    {
      DefaultSinks        = join(",", local.defaults.sinks)
      DefaultTopK         = local.defaults.top_k
      DefaultModel        = local.defaults.model
      DefaultModelVersion = local.defaults.model_version
    },
  ))

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.state_machine.arn}:*"
    level                  = var.state_machine_log_level
    include_execution_data = var.state_machine_log_execution_data
  }

  tracing_configuration {
    enabled = var.xray_tracing
  }

  # CreateStateMachine checks that the role may deliver logs and invoke the functions.
  depends_on = [aws_iam_role_policy.this]
}

################################################################################
# The backfill state machine: state_machine/backfill.asl.json (stack.json's backfill.definition),
# a Distributed Map listing an S3 prefix (ItemReader listObjectsV2) and running the pipeline state
# machine once per batch (startExecution.sync:2), with per-batch outcomes written under
# backfill.results_prefix of the output bucket (ResultWriter). `inferpipe backfill` starts it.
# Standard: a Distributed Map and .sync:2 need it. Created only with the output bucket (s3 sink).
################################################################################

resource "aws_cloudwatch_log_group" "backfill" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days): execution logs are operational, not an audit trail; raise it where a year is required.
  #checkov:skip=CKV_AWS_158:Encrypted with var.kms_key_arn when given; otherwise CloudWatch Logs' own encryption at rest, so the stack deploys without a KMS key.
  count = local.backfill_enabled ? 1 : 0

  name              = local.derived_names.backfill_state_machine_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_sfn_state_machine" "backfill" {
  count = local.backfill_enabled ? 1 : 0

  name     = local.names.backfill_state_machine
  type     = "STANDARD"
  role_arn = aws_iam_role.this["backfill"].arn

  # The values inferpipe/backfill.py (BACKFILL_DEFINITION_VALUES) gives the local run of it.
  definition = templatefile(local.backfill_definition_file, {
    PipelineStateMachineArn = aws_sfn_state_machine.this.arn
    OutputBucket            = aws_s3_bucket.this["output"].bucket
    BackfillResultsPrefix   = local.stack.backfill.results_prefix
  })

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.backfill[0].arn}:*"
    level                  = var.state_machine_log_level
    include_execution_data = var.state_machine_log_execution_data
  }

  tracing_configuration {
    enabled = var.xray_tracing
  }

  # CreateStateMachine checks that the role may deliver logs.
  depends_on = [aws_iam_role_policy.this]
}
