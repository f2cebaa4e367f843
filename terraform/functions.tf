################################################################################
# Three Lambda functions from one container image: stack.json gives each its handler (the
# image's CMD, image_config.command), size, timeout and the exact names of its environment
# variables. Each is called through its alias (stack.json function_alias).
################################################################################

locals {
  image_uri = var.image_uri != null ? var.image_uri : "${try(aws_ecr_repository.this[0].repository_url, local.image_repository_url)}:${var.image_tag}"

  # The stack's values by name, for stack.json's function_environment patterns (the local stack
  # gives its own: inferpipe/stack/resources.py function_environment). A sink that is not deployed
  # gets "": the sink function then answers a request for it with SinkNotConfiguredError. A pattern
  # naming a value not here fails the plan, never silently.
  environment_vars = {
    input_bucket     = aws_s3_bucket.this["input"].bucket
    input_key_prefix = var.input_key_prefix
    models_bucket    = aws_s3_bucket.this["models"].bucket
    work_bucket      = aws_s3_bucket.this["work"].bucket
    output_bucket    = try(aws_s3_bucket.this["output"].bucket, "")
    table            = try(aws_dynamodb_table.this[0].name, "")
    claims_table     = aws_dynamodb_table.claims.name
    topic_arn        = try(aws_sns_topic.this[0].arn, "")
    queue_url        = try(aws_sqs_queue.this[0].url, "")
    event_bus        = try(aws_cloudwatch_event_bus.this[0].name, "")
  }
  # The value of every variable a function may list in stack.json: the settings, then the values.
  function_environment = merge(local.settings, {
    for name, pattern in local.stack.function_environment.values : name => templatestring(pattern, local.environment_vars)
  })
}

################################################################################
# Image repository (optional: by default it exists already, e.g. made by `make push`)
################################################################################

resource "aws_ecr_repository" "this" {
  count = var.create_ecr_repository ? 1 : 0

  name                 = local.names.image_repository
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = var.kms_key_arn != null ? "KMS" : "AES256"
    kms_key         = var.kms_key_arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  count = var.create_ecr_repository ? 1 : 0

  repository = aws_ecr_repository.this[0].name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the newest ${var.ecr_keep_images} images"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = var.ecr_keep_images
      }
      action = { type = "expire" }
    }]
  })
}

# Lambda pulls the image with its service principal, for these functions only. (Without this
# statement Lambda would add a broader one itself, which Terraform would then remove.)
data "aws_iam_policy_document" "ecr" {
  statement {
    sid     = "LambdaImagePull"
    actions = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:sourceArn"
      values   = flatten([for arn in values(local.arns.functions) : [arn, "${arn}:*"]])
    }
  }
}

resource "aws_ecr_repository_policy" "this" {
  count = var.create_ecr_repository ? 1 : 0

  repository = aws_ecr_repository.this[0].name
  policy     = data.aws_iam_policy_document.ecr.json
}

################################################################################
# Functions
################################################################################

resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days): function logs are operational, not an audit trail; raise it where a year is required.
  #checkov:skip=CKV_AWS_158:Encrypted with var.kms_key_arn when given; otherwise CloudWatch Logs' own encryption at rest, so the stack deploys without a KMS key.
  for_each = local.function_log_groups

  name              = each.value
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously by Step Functions, whose Retry and Catch handle failures; the only asynchronous calls are keep-warm pings, which are not retried on purpose.
  #checkov:skip=CKV_AWS_117:No VPC resources are used: S3, DynamoDB, SNS, SQS and EventBridge are reached over their public TLS endpoints with IAM auth. A VPC would need a NAT gateway or five interface endpoints.
  #checkov:skip=CKV_AWS_115:Reserved concurrency is per function in var.functions; not reserved by default because AWS rejects any reservation on accounts with a small concurrency quota.
  #checkov:skip=CKV_AWS_173:The environment holds resource names and settings, no secrets; it is encrypted with var.kms_key_arn when given, else with Lambda's AWS-managed key.
  #checkov:skip=CKV_AWS_272:Lambda code signing applies to .zip packages only, not to container images.
  for_each = local.functions

  function_name = each.value.name
  description   = "inferpipe ${each.key} (${each.value.command})"
  role          = aws_iam_role.this[each.key].arn

  package_type = "Image"
  image_uri    = local.image_uri
  # The image bundles MXNet's x86_64 wheel (there is no arm64 build of mxnet 1.9.1).
  architectures = ["x86_64"]

  image_config {
    command = [each.value.command]
  }

  memory_size                    = each.value.memory_mb
  timeout                        = each.value.timeout_s
  reserved_concurrent_executions = each.value.reserved_concurrency != null ? each.value.reserved_concurrency : -1
  publish                        = true
  kms_key_arn                    = var.kms_key_arn

  ephemeral_storage {
    size = each.value.ephemeral_storage_mb
  }

  environment {
    variables = { for name in each.value.environment : name => local.function_environment[name] }
  }

  tracing_config {
    mode = var.xray_tracing ? "Active" : "PassThrough"
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.function[each.key].name
  }

  # The role's permissions must be in place before the first invocation, which can come from an
  # upload as soon as the state machine exists.
  depends_on = [aws_iam_role_policy.this]
}

resource "aws_lambda_alias" "this" {
  for_each = aws_lambda_function.this

  name             = local.function_alias
  description      = "The version the state machine invokes"
  function_name    = each.value.function_name
  function_version = each.value.version
}

resource "aws_lambda_provisioned_concurrency_config" "this" {
  for_each = { for key, function in local.functions : key => function if function.provisioned_concurrency > 0 }

  function_name                     = aws_lambda_alias.this[each.key].function_name
  qualifier                         = aws_lambda_alias.this[each.key].name
  provisioned_concurrent_executions = each.value.provisioned_concurrency
}

# Keep-warm pings are the only asynchronous invocations: one that fails is not worth a retry.
resource "aws_lambda_function_event_invoke_config" "keep_warm" {
  count = var.keep_warm_enabled ? 1 : 0

  function_name                = aws_lambda_alias.this["inference"].function_name
  qualifier                    = aws_lambda_alias.this["inference"].name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 60
}
