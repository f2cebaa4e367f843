"""Claims: an object version an S3 event names is classified by one execution, however often the event arrives.

EventBridge delivers an event at least once, and the trigger's SQS buffer may hand a message to
the pipe again (a visibility timeout that ran out, a StartExecution that succeeded but looked
failed, a redrive from its dead-letter queue), so the same upload can start two executions, in
two different batches. Per-object idempotency already keeps the S3 and DynamoDB records single;
the message sinks would publish twice. So Preprocess claims each event-named object version
before reading it, with one conditional PutItem on the claims table (stack.json ``claims``):

* the claim's key is a hash of bucket, key, version id and the event's ``sequencer`` (which tells
  two uploads of one key apart in an unversioned bucket too);
* the write succeeds when no claim exists, when the claim is this execution's *group* (itself,
  a retry of the task, a redrive with the same ARN, or an ``inferpipe replay`` of it:
  :func:`functions.common.work.execution_group`), or when the claim has expired;
* otherwise the object is skipped as a duplicate, naming the execution that owns it, and this
  execution writes nothing for it (no record, no message, no failure).

Manual inputs and backfills never claim: asking again is what a user means by them. An event that
carries neither a version id nor a sequencer (typed by hand) cannot be told from another upload of
its key, so it is not claimed either. One claim is one write request of one WRU (the item is far
below 1 KB): $0.625 per million objects on demand.

Conditional writes: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html;
``ReturnValuesOnConditionCheckFailure`` returns the owner's item with the ConditionalCheckFailedException
(https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_PutItem.html). TTL deletes expired
items lazily (typically within a few days), so the condition checks the expiry itself
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/howitworks-ttl.html).

Example::

    claims = Claims(client("dynamodb"), "inferpipe-claims", ttl_s=1296000)
    owners = claims.claim_all(batch.items, execution_id)   # {item index: owning execution ARN} of the duplicates
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from functions.common import config
from functions.common.aws import error_code, raise_transient
from functions.common.batch import Item
from functions.common.errors import ConfigurationError
from functions.common.log import logger
from functions.common.work import execution_group

#: Claims written at once (each a round trip of a few milliseconds).
PARALLEL_CLAIMS = 8
#: The table's partition key and its TTL attribute: stack.json ``claims`` names them for Terraform
#: and the local stack (tests/infra checks the three agree).
KEY_ATTRIBUTE = "claim"
TTL_ATTRIBUTE = "expires_at"
#: Errors that mean the deployment is wrong (the table or the permission is missing): every claim
#: would fail alike, so the whole batch fails with ConfigurationError instead of guessing.
_CONFIGURATION_CODES = frozenset({"ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException"})


def claim_id(bucket: str, key: str, version_id: str | None, sequencer: str | None) -> str:
    """Stable id of one upload: the same event delivered twice gives the same id, two uploads two ids."""
    parts = [bucket, key, version_id or "", sequencer or ""]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def claimable(item: Item) -> bool:
    """True for an object an S3 event named with something that identifies its upload."""
    request = item.request
    return request is not None and request.trigger == "s3-event" and bool(request.source.version_id or item.sequencer)


@dataclass(frozen=True)
class Claims:
    """The claims table of one deployment."""

    ddb: Any
    table: str
    ttl_s: int

    def claim(self, item: Item, execution_id: str, now: float | None = None) -> str | None:
        """Claim ``item`` for ``execution_id``: None if it is this execution's to classify, else the
        ARN of the execution that owns it. Raises TransientError when retrying can help."""
        request = item.request
        assert request is not None
        source = request.source
        now = time.time() if now is None else now
        group = execution_group(execution_id)
        try:
            self.ddb.put_item(
                TableName=self.table,
                Item={
                    KEY_ATTRIBUTE: {"S": claim_id(source.bucket, source.key, source.version_id, item.sequencer)},
                    "owner": {"S": execution_id},
                    "group": {"S": group},
                    "object": {"S": source.uri},
                    TTL_ATTRIBUTE: {"N": str(int(now) + self.ttl_s)},
                },
                ConditionExpression="attribute_not_exists(#c) OR #g = :group OR #e < :now",
                ExpressionAttributeNames={"#c": KEY_ATTRIBUTE, "#g": "group", "#e": TTL_ATTRIBUTE},
                ExpressionAttributeValues={":group": {"S": group}, ":now": {"N": str(int(now))}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                owner = (exc.response.get("Item") or {}).get("owner", {}).get("S")
                return str(owner or "another execution")
            if error_code(exc) in _CONFIGURATION_CODES:
                raise ConfigurationError(
                    f"cannot claim objects in the claims table {self.table}: {error_code(exc)}: {exc}"
                ) from exc
            raise_transient(exc, f"PutItem {self.table} (claim of {source.uri})")
        except BotoCoreError as exc:
            raise_transient(exc, f"PutItem {self.table} (claim of {source.uri})")
        return None

    def claim_all(self, items: Iterable[Item], execution_id: str) -> dict[int, str]:
        """Claim every claimable item; ``{index: owner}`` of those another execution owns."""
        wanted = [item for item in items if claimable(item)]
        if not wanted:
            return {}
        now = time.time()
        with ThreadPoolExecutor(min(PARALLEL_CLAIMS, len(wanted)), thread_name_prefix="claim") as pool:
            owners = list(pool.map(lambda item: self.claim(item, execution_id, now), wanted))
        return {item.index: owner for item, owner in zip(wanted, owners, strict=True) if owner is not None}

    @classmethod
    def from_env(cls, ddb: Any) -> Claims | None:
        """The deployment's claims table (CLAIMS_TABLE, CLAIM_TTL_S), or None where none is
        configured (a unit test, or a stack without one): then nothing is claimed (at-least-once)."""
        table = config.optional(config.CLAIMS_TABLE)
        if table is None:
            return None
        raw = config.require(config.CLAIM_TTL_S)
        if not raw.isdigit() or int(raw) <= 0:
            raise ConfigurationError(f"{config.CLAIM_TTL_S}={raw!r} must be a whole number of seconds > 0")
        return cls(ddb=ddb, table=table, ttl_s=int(raw))


def log_duplicates(items: Iterable[Item], owners: Mapping[int, str]) -> None:
    for item in items:
        if item.index in owners and item.request is not None:
            logger.info(
                "object version already claimed by another execution; skipped as a duplicate",
                extra={"object": item.request.source.uri, "owner": owners[item.index]},
            )


__all__ = ["KEY_ATTRIBUTE", "PARALLEL_CLAIMS", "TTL_ATTRIBUTE", "Claims", "claim_id", "claimable", "log_duplicates"]
