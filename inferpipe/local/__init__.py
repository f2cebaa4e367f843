"""The local stack: inferpipe on moto (S3, EventBridge, Step Functions, Lambda, DynamoDB, SNS, SQS) in one process.

* :mod:`inferpipe.stack.resources` renders ``config/stack.json`` (the names Terraform uses too) and the ASL.
* :mod:`inferpipe.local.provision` creates every resource; :mod:`inferpipe.local.stack` runs it all
  in this process (:class:`LocalStack`); :mod:`inferpipe.local.daemon` runs it in the background.
* Lambda functions run in execution environments of their own
  (:mod:`inferpipe.local.execution_environment`, pooled by :mod:`inferpipe.local.environment_pool`).
* :mod:`inferpipe.local.guard` keeps web pages out; :mod:`inferpipe.local.faults` injects AWS API faults.

The bridges over moto 5.2's gaps, one a line (moto gap -> module). The patches of moto's classes,
installed and undone together by :mod:`inferpipe.local.patches`:

* Lambda returns a canned payload without Docker -> :mod:`inferpipe.local.lambda_service` runs the handler
* Lambda cannot be made to fail an invocation (tests) -> :mod:`inferpipe.local.lambda_faults`
* EventBridge cannot deliver to state machines (nor skips disabled rules) -> :mod:`inferpipe.local.event_delivery`
* invocations and Step Functions' tasks do not act as their IAM roles -> :mod:`inferpipe.local.credentials`
* IAM checks only S3 and SQS resources, and misnames some actions -> :mod:`inferpipe.local.iam_enforcement`
* Step Functions pages no history, misnames Lambda errors and unnamed executions -> :mod:`inferpipe.local.sfn_api`
* Step Functions has no RedriveExecution -> :mod:`inferpipe.local.redrive`
* Step Functions sends no execution status change events -> :mod:`inferpipe.local.status_events`
* moto's hot paths stall under a burst -> :mod:`inferpipe.local.speedups`

And the ones that run beside moto instead of patching it:

* moto keeps no state across restarts -> :mod:`inferpipe.local.persistence`
* EventBridge Pipes stores pipes but runs none -> :mod:`inferpipe.local.pipes`
* Step Functions runs no Distributed Map -> :mod:`inferpipe.local.distributed_map` (used by the backfill)

Example::

    from inferpipe.local import LocalStack

    with LocalStack().start() as stack:
        stack.client("s3").put_object(Bucket=stack.resources.buckets["input"], Key="incoming/a.jpg", Body=data)
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalStack", "Resources", "render_resources"]


def __getattr__(name: str) -> Any:  # lazy: `inferpipe local status` need not import boto3 or moto
    if name == "LocalStack":
        from inferpipe.local.stack import LocalStack

        return LocalStack
    if name in ("Resources", "render_resources"):
        from inferpipe.stack import resources as spec

        return getattr(spec, name)
    raise AttributeError(name)
