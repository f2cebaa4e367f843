terraform {
  # >= 1.9: templatestring() (names from config/stack.json) and variable validations that refer
  # to other variables and locals.
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
  }
}

provider "aws" {
  # null: the region of the usual AWS settings (AWS_REGION, AWS_DEFAULT_REGION or the profile).
  region = var.region

  default_tags {
    tags = merge({ Project = local.prefix, ManagedBy = "terraform" }, var.tags)
  }
}
