"""The local stack: inferpipe on moto (S3, EventBridge, Step Functions, Lambda, DynamoDB, SNS, SQS) in one process.

* :mod:`inferpipe.stack.resources` renders ``config/stack.json`` (the names Terraform uses too) and the ASL.
* :mod:`inferpipe.local.bridge` patches moto's gaps: Lambda runs our handlers (in execution
  environments of their own, :mod:`inferpipe.local.environments`), and EventBridge rules start
  state machine executions. :mod:`inferpipe.local.guard` keeps web pages out.
* :mod:`inferpipe.local.provision` creates every resource; :mod:`inferpipe.local.stack` runs it all
  in this process (:class:`LocalStack`); :mod:`inferpipe.local.daemon` runs it in the background.

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
