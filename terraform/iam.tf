################################################################################
# IAM: one role per function, one for the state machine, one for the trigger rule's target and
# one for the keep-warm schedule. Their inline policies are the templates in policies/, rendered
# in locals.tf (local.role_policies) from names only; inferpipe/infra.py renders the very same
# documents for the local stack. Least privilege: exact buckets and key prefixes, the table, topic,
# queue, bus, functions and state machine; no "*" action. "Resource": "*" appears only where AWS
# offers no narrower scope (policies/README.md says where and why).
################################################################################

locals {
  # Role => the service that assumes it.
  role_services = merge(
    { for key in keys(local.functions) : key => "lambda.amazonaws.com" },
    {
      state_machine = "states.amazonaws.com"
      trigger       = "events.amazonaws.com"
    },
    var.keep_warm_enabled ? { keep_warm = "scheduler.amazonaws.com" } : {},
  )

  role_policy_attachments = merge([
    for role in keys(local.role_services) : {
      for template, document in local.role_policies[role] : "${role}/${template}" => {
        role     = role
        name     = template
        document = document
      }
    }
  ]...)
}

data "aws_iam_policy_document" "assume" {
  for_each = toset(values(local.role_services))

  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = [each.value]
    }

    # Confused-deputy guard where the service sets aws:SourceAccount when it assumes the role.
    dynamic "condition" {
      for_each = contains(["states.amazonaws.com", "scheduler.amazonaws.com"], each.value) ? [local.account_id] : []
      content {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [condition.value]
      }
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = local.role_services

  name               = local.role_names[each.key]
  description        = "inferpipe ${replace(each.key, "_", " ")}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.value].json
}

resource "aws_iam_role_policy" "this" {
  for_each = local.role_policy_attachments

  name   = each.value.name
  role   = aws_iam_role.this[each.value.role].id
  policy = each.value.document
}

# The policies name resources by ARNs built from names (locals.tf); make sure they are the ARNs
# AWS gave. A failed check is reported after apply as a warning.
check "policy_arns_match_resources" {
  assert {
    condition = alltrue(concat(
      [aws_sfn_state_machine.this.arn == local.arns.state_machine],
      [for key, alias in aws_lambda_alias.this : alias.arn == local.arns.function_aliases[key]],
      [for key, group in aws_cloudwatch_log_group.function : group.arn == local.arns.log_groups[key]],
      [for key, bucket in aws_s3_bucket.this : bucket.arn == local.arns.buckets[key]],
      [for table in aws_dynamodb_table.this : table.arn == local.arns.table],
      [for topic in aws_sns_topic.this : topic.arn == local.arns.topic],
      [for queue in aws_sqs_queue.this : queue.arn == local.arns.queue],
      [for bus in aws_cloudwatch_event_bus.this : bus.arn == local.arns.event_bus],
    ))
    error_message = "An ARN built in locals.tf differs from the created resource's: the IAM policies would not grant what the functions need."
  }
}
