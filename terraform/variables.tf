################################################################################
# Naming and placement
################################################################################

variable "prefix" {
  description = "Prefix of every resource name (the patterns are in config/stack.json). null: stack.json's \"prefix\" (inferpipe). 3-24 characters: lower-case letters, digits and '-', starting with a letter; short enough for the longest bucket name (<prefix>-models-<account>-<region>) to stay within S3's 63."
  type        = string
  default     = null

  validation {
    condition     = var.prefix == null || can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.prefix))
    error_message = "prefix must be 3-24 characters of a-z, 0-9 and '-', start with a letter and not end with '-'."
  }
}

variable "region" {
  description = "AWS region to deploy to. null: the region of the usual AWS settings (AWS_REGION, AWS_DEFAULT_REGION or the profile's region)."
  type        = string
  default     = null

  validation {
    condition     = var.region == null || can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like us-east-1, eu-west-2 or us-gov-west-1."
  }
}

variable "tags" {
  description = "Tags added to every resource (merged over Project and ManagedBy)."
  type        = map(string)
  default     = {}
}

################################################################################
# Container image (one image, three functions)
################################################################################

variable "image_uri" {
  description = "The functions' container image in ECR, by tag or digest, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/inferpipe:1.0.0 or ...@sha256:<64 hex>. Must be in this region (Lambda pulls only from ECR). null: <account>.dkr.ecr.<region>.<dns suffix>/<image repository from stack.json>:<image_tag>. One of image_uri and image_tag is required."
  type        = string
  default     = null

  validation {
    condition     = var.image_uri != null || var.image_tag != null
    error_message = "Set image_uri (the pushed image, e.g. -var image_uri=123456789012.dkr.ecr.eu-west-1.amazonaws.com/inferpipe:1.0.0) or image_tag (a tag pushed to the stack's own repository)."
  }

  validation {
    condition     = var.image_uri == null || can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.image_uri))
    error_message = "image_uri must be an ECR image with a tag or digest: <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> or ...@sha256:<digest>."
  }
}

variable "image_tag" {
  description = "Tag of the image in the stack's repository (named by stack.json's image_repository, e.g. inferpipe), used when image_uri is null. Prefer a unique tag (a version or commit) per build: the repository created here has immutable tags."
  type        = string
  default     = null

  validation {
    condition     = var.image_tag == null || can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a Docker tag: up to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'."
  }
}

variable "create_ecr_repository" {
  description = "Create the ECR repository (named by stack.json's image_repository) with immutable tags, scan on push and a lifecycle policy. false (default): the repository exists already (created by you, or by another stack). With true (what `make deploy` passes), create it first (terraform apply -target=aws_ecr_repository.this), push the image, then apply everything."
  type        = bool
  default     = false
}

variable "ecr_keep_images" {
  description = "With create_ecr_repository: how many of the newest images the repository keeps (older ones expire). Keep enough for every function version you may roll back to."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 1 && floor(var.ecr_keep_images) == var.ecr_keep_images
    error_message = "ecr_keep_images must be a whole number >= 1."
  }
}

################################################################################
# Functions
################################################################################

variable "functions" {
  description = <<-EOT
    Per-function sizing, keyed by stack.json's function keys (preprocess, inference, sink). Every attribute is optional:
      memory_mb               MB of memory (128-10240; CPU grows with it). null: stack.json's memory_mb (preprocess 1024, inference 2048, sink 256).
                              inference needs >= 1024 for ResNet-50 (the model cache, MODEL_CACHE_MB, must also fit beside MXNet).
      timeout_s               seconds (1-900). null: stack.json's timeout_s (30, 60, 15). inference needs >= 30 for a ResNet-50 cold start.
                              Must stay below its task's TimeoutSeconds in state_machine/pipeline.asl.json (now 40, 75, 20), or the state machine gives up first.
      ephemeral_storage_mb    /tmp size (512-10240, default 512). Models are loaded from memory, not /tmp, so 512 suffices for ResNet-50 (about 100 MB of parameters).
      reserved_concurrency    concurrency reserved for (and capping) the function. null (default): unreserved. AWS refuses any reservation
                              that leaves the account below its minimum of unreserved concurrency, which accounts on a small quota cannot meet.
      provisioned_concurrency pre-initialised execution environments on the function's "live" alias (billed while they exist; default 0).
                              The alternative to keep_warm for latency-critical inference.
  EOT
  type = map(object({
    memory_mb               = optional(number)
    timeout_s               = optional(number)
    ephemeral_storage_mb    = optional(number, 512)
    reserved_concurrency    = optional(number)
    provisioned_concurrency = optional(number, 0)
  }))
  default = {}

  validation {
    condition     = alltrue([for key in keys(var.functions) : contains(keys(local.stack.functions), key)])
    error_message = "functions may only have the keys of config/stack.json's functions: preprocess, inference, sink."
  }

  validation {
    condition = alltrue([for f in values(var.functions) : (
      (f.memory_mb == null ? true : f.memory_mb >= 128 && f.memory_mb <= 10240 && floor(f.memory_mb) == f.memory_mb) &&
      (f.timeout_s == null ? true : f.timeout_s >= 1 && f.timeout_s <= 900 && floor(f.timeout_s) == f.timeout_s) &&
      f.ephemeral_storage_mb >= 512 && f.ephemeral_storage_mb <= 10240 &&
      (f.reserved_concurrency == null ? true : f.reserved_concurrency >= 0) &&
      f.provisioned_concurrency >= 0
    )])
    error_message = "memory_mb must be 128-10240, timeout_s 1-900, ephemeral_storage_mb 512-10240, reserved_concurrency and provisioned_concurrency >= 0."
  }

  validation {
    condition = (
      try(var.functions["inference"].memory_mb, null) == null ? true : var.functions["inference"].memory_mb >= 1024
      ) && (
      try(var.functions["inference"].timeout_s, null) == null ? true : var.functions["inference"].timeout_s >= 30
    )
    error_message = "inference needs memory_mb >= 1024 and timeout_s >= 30 for ResNet-50 (model load and the first forward pass)."
  }

  validation {
    condition = alltrue([for key, f in var.functions : (
      f.timeout_s == null ? true : f.timeout_s < lookup(local.function_task_timeouts, key, 901)
    )])
    error_message = "A function's timeout_s must be below its task's TimeoutSeconds in the state machine definition (${jsonencode(local.function_task_timeouts)}), or the state machine gives up on it first."
  }
}

variable "log_level" {
  description = "POWERTOOLS_LOG_LEVEL of every function: DEBUG, INFO, WARNING, ERROR or CRITICAL. null: stack.json's setting (INFO)."
  type        = string
  default     = null

  validation {
    condition     = var.log_level == null || contains(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], coalesce(var.log_level, "INFO"))
    error_message = "log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL."
  }
}

variable "xray_tracing" {
  description = "X-Ray active tracing for the functions and the state machine (one trace per image from the trigger to the sinks). Costs per trace recorded beyond the free tier."
  type        = bool
  default     = true
}

variable "keep_warm_enabled" {
  description = "Ping the inference function's live alias with {\"warmup\": true} on keep_warm_schedule (EventBridge Scheduler), so one execution environment keeps the model loaded. Cheap but best effort; provisioned_concurrency (see functions) is the guaranteed alternative."
  type        = bool
  default     = false
}

variable "keep_warm_schedule" {
  description = "Schedule expression of the keep-warm ping, e.g. rate(5 minutes) (idle environments are usually reclaimed after 5-15 minutes)."
  type        = string
  default     = "rate(5 minutes)"

  validation {
    condition     = can(regex("^(rate\\([0-9]+ (minute|minutes|hour|hours)\\)|cron\\(.+\\))$", var.keep_warm_schedule))
    error_message = "keep_warm_schedule must be rate(N minutes|hours) or cron(...)."
  }
}

################################################################################
# Pipeline behaviour
################################################################################

variable "sinks" {
  description = "Sinks to deploy and deliver to by default: any of s3, dynamodb, sns, sqs, eventbridge. A sink left out is not created, its function variables are empty, and a request naming it fails with SinkNotConfiguredError. null: stack.json's defaults.sinks (all five)."
  type        = list(string)
  default     = null

  validation {
    condition     = var.sinks == null || (length(coalesce(var.sinks, [])) > 0 && alltrue([for s in coalesce(var.sinks, []) : contains(local.known_sinks, s)]))
    error_message = "sinks must be a non-empty list of s3, dynamodb, sns, sqs and eventbridge."
  }

  validation {
    condition     = var.sinks == null || length(distinct(coalesce(var.sinks, []))) == length(coalesce(var.sinks, []))
    error_message = "sinks must not repeat a sink."
  }
}

variable "default_model" {
  description = "Model name used when a request names none (DEFAULT_MODEL, the state machine's DefaultModel). null: stack.json's defaults.model (efficientnet_lite0, the pretrained ImageNet model)."
  type        = string
  default     = null

  validation {
    condition     = var.default_model == null || can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", var.default_model))
    error_message = "default_model must be 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit."
  }
}

variable "default_model_version" {
  description = "Model version or alias used when a request names none, e.g. prod (DEFAULT_MODEL_VERSION, DefaultModelVersion). null: stack.json's defaults.model_version."
  type        = string
  default     = null

  validation {
    condition     = var.default_model_version == null || can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", var.default_model_version))
    error_message = "default_model_version must be 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit."
  }
}

variable "default_top_k" {
  description = "How many classes a prediction lists when the request does not say (DefaultTopK). null: stack.json's defaults.top_k."
  type        = number
  default     = null

  validation {
    condition     = var.default_top_k == null || (coalesce(var.default_top_k, 1) >= 1 && coalesce(var.default_top_k, 1) <= 1000 && floor(coalesce(var.default_top_k, 1)) == coalesce(var.default_top_k, 1))
    error_message = "default_top_k must be a whole number from 1 to 1000."
  }
}

variable "state_machine_type" {
  description = <<-EOT
    STANDARD (default) or EXPRESS.
      STANDARD: exactly-once state transitions, executions up to a year, 90 days of execution history in the console and
                DescribeExecution (which `inferpipe classify` uses to wait for a result); priced per state transition.
      EXPRESS:  cheaper and faster to start at high volume, but at-least-once (the sink writes are idempotent, so duplicates
                only cost), at most 5 minutes per execution, and no DescribeExecution or history: results are read from
                the sinks and the execution log only (set state_machine_log_level = "ALL").
  EOT
  type        = string
  default     = "STANDARD"

  validation {
    condition     = contains(["STANDARD", "EXPRESS"], var.state_machine_type)
    error_message = "state_machine_type must be STANDARD or EXPRESS."
  }
}

variable "state_machine_log_level" {
  description = "Execution log level of the state machine in CloudWatch Logs: ALL (every state transition), ERROR (failed executions and states), FATAL or OFF."
  type        = string
  default     = "ERROR"

  validation {
    condition     = contains(["ALL", "ERROR", "FATAL", "OFF"], var.state_machine_log_level)
    error_message = "state_machine_log_level must be ALL, ERROR, FATAL or OFF."
  }
}

variable "state_machine_log_execution_data" {
  description = "Include execution input and output in the state machine's log events: bucket and object keys, model names and predictions (never image bytes). On by default, because the log is the only execution history of an EXPRESS state machine and what explains a failed one; turn it off if object keys are sensitive."
  type        = bool
  default     = true
}

variable "input_key_prefix" {
  description = "Only objects whose key starts with this prefix start the pipeline, e.g. \"uploads/\". \"\" (default): any key. Keys are matched as EventBridge delivers them."
  type        = string
  default     = ""
}

variable "input_key_suffixes" {
  description = "Only objects whose key ends with one of these suffixes start the pipeline, e.g. [\".jpg\", \".jpeg\", \".png\"] (case-sensitive). [] (default): any key. Combined with input_key_prefix, both must match."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.input_key_suffixes : length(s) > 0])
    error_message = "input_key_suffixes must not contain an empty string."
  }
}

variable "trigger_mode" {
  description = <<-EOT
    How uploads start the state machine: one of stack.json's trigger_buffer.modes. null: its default_mode ("batched").
      batched: the trigger rule sends each "Object Created" event to an SQS buffer queue; an EventBridge Pipe drains it and
               starts one execution per batch of up to trigger_batch_size objects, waiting at most trigger_batching_window_s
               after the first. A trickle gets batches of one within about a second, a flood full batches: far fewer
               executions, state transitions and function invocations per image.
      direct:  the rule starts one execution per upload (lowest latency per image, no queue or pipe).
  EOT
  type        = string
  default     = null

  validation {
    condition     = var.trigger_mode == null || contains(local.stack.trigger_buffer.modes, coalesce(var.trigger_mode, "-"))
    error_message = "trigger_mode must be one of ${join(", ", local.stack.trigger_buffer.modes)} (config/stack.json trigger_buffer.modes)."
  }
}

variable "trigger_batch_size" {
  description = "With trigger_mode = \"batched\": most objects per execution, the pipe's SQS batch size (1 to settings.MAX_BATCH_OBJECTS of stack.json, 100, the most the state machine classifies in one execution). Above 10 the batching window must be at least 1 s. null: MAX_BATCH_OBJECTS."
  type        = number
  default     = null

  validation {
    condition = var.trigger_batch_size == null || (
      coalesce(var.trigger_batch_size, 1) >= 1 &&
      coalesce(var.trigger_batch_size, 1) <= tonumber(local.stack.settings.MAX_BATCH_OBJECTS) &&
      floor(coalesce(var.trigger_batch_size, 1)) == coalesce(var.trigger_batch_size, 1)
    )
    error_message = "trigger_batch_size must be a whole number from 1 to ${local.stack.settings.MAX_BATCH_OBJECTS} (settings.MAX_BATCH_OBJECTS in config/stack.json: the most objects one execution classifies)."
  }
}

variable "trigger_batching_window_s" {
  description = "With trigger_mode = \"batched\": how long the pipe may wait after the first message to fill a batch, 0-300 s (the pipe's maximum_batching_window_in_seconds). null: stack.json's trigger_buffer.batching_window_s (1). Must be >= 1 when the batch size is above 10."
  type        = number
  default     = null

  validation {
    condition = var.trigger_batching_window_s == null || (
      coalesce(var.trigger_batching_window_s, 0) >= 0 &&
      coalesce(var.trigger_batching_window_s, 0) <= 300 &&
      floor(coalesce(var.trigger_batching_window_s, 0)) == coalesce(var.trigger_batching_window_s, 0)
    )
    error_message = "trigger_batching_window_s must be a whole number of seconds from 0 to 300."
  }

  # A standard SQS source with a batch size above 10 requires a batching window of at least 1 s
  # (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-sqs.html); CreatePipe would
  # refuse it at apply time, so refuse it at plan time.
  validation {
    condition = (
      coalesce(var.trigger_mode, local.stack.trigger_buffer.default_mode) != "batched" ||
      coalesce(var.trigger_batch_size, tonumber(local.stack.settings.MAX_BATCH_OBJECTS)) <= 10 ||
      coalesce(var.trigger_batching_window_s, local.stack.trigger_buffer.batching_window_s) >= 1
    )
    error_message = "A trigger batch size above 10 needs trigger_batching_window_s >= 1 (an SQS source batching more than 10 messages requires a batching window): raise the window or set trigger_batch_size <= 10."
  }
}

variable "trigger_maximum_event_age_seconds" {
  description = "How long EventBridge keeps retrying to deliver an upload's event to the rule's target (the buffer queue, or in direct mode the state machine) (60-86400 s) before sending it to the trigger dead-letter queue. null: stack.json's trigger_target.maximum_event_age_s (86400)."
  type        = number
  default     = null

  validation {
    condition     = var.trigger_maximum_event_age_seconds == null || (coalesce(var.trigger_maximum_event_age_seconds, 60) >= 60 && coalesce(var.trigger_maximum_event_age_seconds, 60) <= 86400)
    error_message = "trigger_maximum_event_age_seconds must be 60-86400."
  }
}

variable "trigger_maximum_retry_attempts" {
  description = "How many times EventBridge retries delivering an upload's event to the rule's target (the buffer queue, or in direct mode the state machine) (0-185) before sending it to the trigger dead-letter queue. null: stack.json's trigger_target.maximum_retry_attempts (185)."
  type        = number
  default     = null

  validation {
    condition     = var.trigger_maximum_retry_attempts == null || (coalesce(var.trigger_maximum_retry_attempts, 0) >= 0 && coalesce(var.trigger_maximum_retry_attempts, 0) <= 185)
    error_message = "trigger_maximum_retry_attempts must be 0-185."
  }
}

################################################################################
# Storage and retention
################################################################################

variable "kms_key_arn" {
  description = <<-EOT
    Customer managed KMS key for buckets, queues, topics, the table, log groups, function environments, the ECR
    repository and the keep-warm schedule. null (default): AWS-managed or service-owned encryption (SSE-S3,
    SSE-SQS, alias/aws/sns, DynamoDB's AWS-owned key). The key must be in this region and its key policy must allow,
    besides this account's IAM principals (which the functions' roles are granted kms:Decrypt and kms:GenerateDataKey
    through): logs.<region>.amazonaws.com (log groups), events.amazonaws.com (the trigger dead-letter queue and buffer queue) and
    cloudwatch.amazonaws.com (alarms published to the alarm topic).
  EOT
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]{36}$", var.kms_key_arn))
    error_message = "kms_key_arn must be a key ARN: arn:aws:kms:<region>:<account>:key/<key id> (not an alias)."
  }
}

variable "access_log_bucket" {
  description = "Name of an existing bucket (same region, accepting S3 server access logs from logging.s3.amazonaws.com) that receives the access logs of the four buckets under <bucket name>/. null (default): no access logging."
  type        = string
  default     = null

  validation {
    condition     = var.access_log_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.access_log_bucket))
    error_message = "access_log_bucket must be a bucket name."
  }
}

variable "work_expiration_days" {
  description = "Days before the preprocessed tensors in the work bucket expire. They are needed only while an execution runs."
  type        = number
  default     = 1

  validation {
    condition     = var.work_expiration_days >= 1 && floor(var.work_expiration_days) == var.work_expiration_days
    error_message = "work_expiration_days must be a whole number >= 1."
  }
}

variable "ledger_expiration_days" {
  description = "Days before the message sinks' delivery ledger (deliveries/ in the output bucket) expires. A replay or redrive within this many days publishes nothing twice; executions are redrivable for 14 days."
  type        = number
  default     = 30

  validation {
    condition     = var.ledger_expiration_days >= 14 && floor(var.ledger_expiration_days) == var.ledger_expiration_days
    error_message = "ledger_expiration_days must be a whole number >= 14 (a redrive within 14 days must find the ledger)."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days before replaced or deleted object versions in the versioned buckets (input, models, output) expire; current versions are kept. Set a large value (e.g. 36500) to keep history for good."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number >= 1."
  }
}

variable "force_destroy" {
  description = "Let terraform destroy delete the buckets with their objects, and the table without deletion protection. Keep false outside test stacks."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Retention of the functions' and the state machine's CloudWatch log groups, in days (a value CloudWatch Logs accepts: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

################################################################################
# Monitoring
################################################################################

variable "alarm_email" {
  description = "E-mail address subscribed to the alarm topic (AWS sends a confirmation mail first). null (default): no subscription; subscribe to the alarm_topic_arn output yourself."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be an e-mail address."
  }
}

variable "alarm_period_seconds" {
  description = "Evaluation period of the alarms, in seconds (a multiple of 60)."
  type        = number
  default     = 300

  validation {
    condition     = var.alarm_period_seconds >= 60 && var.alarm_period_seconds % 60 == 0
    error_message = "alarm_period_seconds must be a multiple of 60."
  }
}
