# Where the stack is deployed: account, region and partition (aws, aws-cn, aws-us-gov).
#
# Kept out of locals.tf on purpose: locals.tf depends only on variables and config/stack.json, so
# the account-free tests (tests/infra) evaluate it with real Terraform core and no AWS provider,
# replacing this file with fixed values.
data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition
  dns_suffix = data.aws_partition.current.dns_suffix
}
