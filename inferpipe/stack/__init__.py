"""The stack definition both the local stack and an AWS deployment use, rendered from config/stack.json.

* :mod:`inferpipe.stack.resources`: every resource name of one (prefix, account, region), each
  function's environment, and Terraform-compatible template rendering (the state machines' ASL).
* :mod:`inferpipe.stack.policies`: the roles, the service principals that assume them and the IAM
  documents Terraform attaches to them (``terraform/policies/*.json.tftpl``).

``tests/infra`` checks that Terraform renders what these modules render.
"""
