################################################################################
# IAM: one role per function, one for the state machine, one for the trigger (the rule's target
# in direct mode, the pipe in batched mode), one for the backfill state machine and one for the
# keep-warm schedule (local.role_services in locals.tf). Their inline policies are the templates in
# policies/, rendered in locals.tf (local.role_policies) from names only; inferpipe/stack/policies.py renders
# the very same documents for the local stack. Least privilege: exact buckets and key prefixes, the
# table, topic, queues, bus, functions and state machines; no "*" action. "Resource": "*" appears
# only where AWS offers no narrower scope (policies/README.md says where and why).
################################################################################

locals {
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
  for_each = local.role_services

  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = [each.value]
    }

    # Confused-deputy guards (aws:SourceAccount, aws:SourceArn), chosen in locals.tf.
    dynamic "condition" {
      for_each = local.role_trust_conditions[each.key]
      content {
        test     = condition.value.test
        variable = condition.value.variable
        values   = condition.value.values
      }
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = local.role_services

  name               = local.role_names[each.key]
  description        = "inferpipe ${replace(each.key, "_", " ")}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
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
      [aws_dynamodb_table.claims.arn == local.arns.claims_table],
      [for topic in aws_sns_topic.this : topic.arn == local.arns.topic],
      [for queue in aws_sqs_queue.this : queue.arn == local.arns.queue],
      [for bus in aws_cloudwatch_event_bus.this : bus.arn == local.arns.event_bus],
      [for queue in aws_sqs_queue.trigger_buffer : queue.arn == local.arns.trigger_buffer],
      [for pipe in aws_pipes_pipe.trigger : pipe.arn == local.arns.pipe],
      [for machine in aws_sfn_state_machine.backfill : machine.arn == local.arns.backfill_state_machine],
    ))
    error_message = "An ARN built in locals.tf differs from the created resource's: the IAM policies would not grant what the functions need."
  }
}
