################################################################################
# Buckets (names from stack.json)
#   input   uploads to classify; versioned, so an execution reads exactly the version that
#           triggered it; sends "Object Created" events to EventBridge
#   models  published model packages (models/<name>/versions/..., aliases/...); versioned
#   work    preprocessed tensors, needed only while an execution runs; they expire
#   output  prediction records (the s3 sink); created only with that sink
# All private (public access blocked, bucket owner enforced), encrypted (SSE-S3, or SSE-KMS with
# kms_key_arn) and reachable over TLS 1.2+ only.
################################################################################

locals {
  deployed_buckets = { for key, name in local.buckets : key => name if key != "output" || local.sink_enabled.s3 }
  # Tensors are rewritten under deterministic keys and expire within days: versioning would only
  # keep garbage around.
  versioned_buckets = { for key, name in local.deployed_buckets : key => name if !contains(local.stack.unversioned_buckets, key) }
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logging is optional (var.access_log_bucket, aws_s3_bucket_logging below): it needs a log bucket outside this stack.
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice the stack cannot make for its users (it needs a bucket in a second region); inputs can be re-uploaded and predictions recomputed.
  #checkov:skip=CKV_AWS_145:SSE-S3 by default so the stack deploys without a KMS key; set kms_key_arn for SSE-KMS.
  #checkov:skip=CKV_AWS_21:The work bucket is deliberately unversioned (expiring scratch tensors); input, models and output are versioned by aws_s3_bucket_versioning.this.
  #checkov:skip=CKV2_AWS_62:Only the input bucket's events matter (EventBridge, aws_s3_bucket_notification.input); the others are written by the pipeline itself.
  for_each = local.deployed_buckets

  bucket        = each.value
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = aws_s3_bucket.this

  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn != null ? "aws:kms" : "AES256"
      kms_master_key_id = var.kms_key_arn
    }
    # With KMS: one data key per bucket and hour instead of one KMS call per object.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.versioned_buckets

  bucket = aws_s3_bucket.this[each.key].id

  versioning_configuration {
    status = "Enabled"
  }
}

# Scratch tensors expire; unfinished multipart uploads are cleaned up everywhere.
resource "aws_s3_bucket_lifecycle_configuration" "work" {
  bucket = aws_s3_bucket.this["work"].id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-tensors"
    status = "Enabled"

    filter {
      prefix = local.settings.WORK_PREFIX
    }

    expiration {
      days = var.work_expiration_days
    }
  }
}

# Replaced and deleted versions expire (the current version of every object stays).
resource "aws_s3_bucket_lifecycle_configuration" "versioned" {
  for_each = local.versioned_buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    # A delete marker left alone once the versions behind it expired (the ledger's, a deleted
    # view's) is removed too.
    expiration {
      expired_object_delete_marker = true
    }
  }

  # The delivery ledger (functions/sink/batch.py) is needed only as long as a replay can come.
  dynamic "rule" {
    for_each = each.key == "output" ? [local.ledger_prefix] : []

    content {
      id     = "expire-delivery-ledger"
      status = "Enabled"

      filter {
        prefix = rule.value
      }

      expiration {
        days = var.ledger_expiration_days
      }
    }
  }

  # Lifecycle rules on a bucket whose versioning is still being enabled are rejected.
  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "bucket" {
  for_each = aws_s3_bucket.this

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]

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

  statement {
    sid       = "DenyOutdatedTls"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  policy = data.aws_iam_policy_document.bucket[each.key].json

  # A bucket policy is refused while public access blocking is being set up (409 conflicts).
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_logging" "this" {
  for_each = var.access_log_bucket != null ? aws_s3_bucket.this : {}

  bucket        = each.value.id
  target_bucket = var.access_log_bucket
  target_prefix = "${each.value.bucket}/"
}

# "Object Created" events of the input bucket go to EventBridge's default bus, where the trigger
# rule (events.tf) matches them.
resource "aws_s3_bucket_notification" "input" {
  bucket      = aws_s3_bucket.this["input"].id
  eventbridge = true
}

################################################################################
# Claims (stack.json claims): one item per object version an S3 event names, written by
# Preprocess with a conditional PutItem, so that an event delivered twice (EventBridge and SQS
# deliver at least once) is classified and published once (functions/preprocess/claims.py).
# Items expire by TTL after settings.CLAIM_TTL_S.
################################################################################

resource "aws_dynamodb_table" "claims" {
  name                        = local.names.claims_table
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = local.stack.claims.key_attribute
  deletion_protection_enabled = !var.force_destroy

  attribute {
    name = local.stack.claims.key_attribute
    type = "S"
  }

  ttl {
    enabled        = true
    attribute_name = local.stack.claims.ttl_attribute
  }

  # A few hundred bytes per upload kept for days: restoring costs next to nothing and keeps the
  # duplicate guard across an accidental delete.
  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }
}
