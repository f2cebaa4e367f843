################################################################################
# The state machine: state_machine/pipeline.asl.json (the file stack.json names), its ${...}
# placeholders filled by templatefile() exactly as the local stack fills them
# (inferpipe.local.spec.asl_values); $$.Execution.Id and the other "$$." paths pass through.
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

  definition = templatefile(local.state_machine_definition_file, {
    PreprocessFunctionArn = aws_lambda_alias.this["preprocess"].arn
    InferenceFunctionArn  = aws_lambda_alias.this["inference"].arn
    SinkFunctionArn       = aws_lambda_alias.this["sink"].arn
    DefaultSinks          = join(",", local.defaults.sinks)
    DefaultTopK           = local.defaults.top_k
    DefaultModel          = local.defaults.model
    DefaultModelVersion   = local.defaults.model_version
  })

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
