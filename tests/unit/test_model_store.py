"""The model bucket: publishing packages and resolving versions and aliases back (moto as S3)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import mxnet as mx
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from mxnet.gluon.model_zoo.vision import BasicBlockV1, ResNetV1

from functions.common.aws import read_object
from functions.common.errors import InvalidRequestError, ModelIntegrityError, ModelNotFoundError, TransientError
from functions.common.manifest import MANIFEST_FILE, InputSpec, Manifest, sha256_bytes
from functions.common.model_store import ModelStore, cached_store, manifest_key, version_prefix
from inferpipe.models import list_versions, publish, set_alias
from inferpipe.packaging import export_package, load_package_dir

BUCKET = "models-bucket"
TINY_SPEC = InputSpec(height=32, width=32, resize_shorter=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def tiny_package(out_dir: Path, labels: list[str], seed: int = 0) -> Manifest:
    """A ResNet-10 v1 with 4-16 channels: a real package that loads in milliseconds."""
    mx.random.seed(seed)
    net = ResNetV1(BasicBlockV1, [1, 1, 1, 1], [4, 4, 8, 12, 16], classes=len(labels), thumbnail=True, prefix="tiny_")
    net.initialize(mx.init.Xavier())
    return export_package(
        net,
        labels,
        TINY_SPEC,
        out_dir,
        name="tiny",
        architecture="resnet10_v1",
        source="unit test",
        metrics={"seed": seed},
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_package(path, ["cat", "dog"])
    return path


@pytest.fixture(scope="module")
def other_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model-2")
    tiny_package(path, ["cat", "dog"], seed=1)
    return path


@pytest.fixture
def s3(moto_env: None) -> Iterator[Any]:
    """GIVEN an empty model bucket."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_a_version_resolves_by_its_id_and_through_an_alias(s3: Any, package: Path) -> None:
    # GIVEN a package published with alias prod
    published = publish(s3, BUCKET, package, name="tiny", alias="prod")
    store = ModelStore(BUCKET, s3)
    # WHEN it is resolved by version and by alias
    by_version = store.resolve("tiny", published.version)
    by_alias = store.resolve("tiny", "prod")
    # THEN both give the exact version and the package's description
    assert by_version.version == by_alias.version == published.version
    assert by_alias.name == "tiny"
    assert by_alias.num_classes == 2 and by_alias.input == TINY_SPEC


def test_a_manifest_overwritten_with_other_files_is_refused_under_its_version(
    s3: Any, package: Path, other_package: Path
) -> None:
    # GIVEN a published version whose manifest someone overwrote with another package's files
    # (both their files are in place, so every file would pass its own sha256 check)
    published = publish(s3, BUCKET, package, name="tiny", alias="prod")
    other = publish(s3, BUCKET, other_package, name="tiny")
    forged = {**json.loads(other.to_json()), "version": published.version}
    prefix = version_prefix("tiny", published.version)
    for entry in forged["files"].values():  # the other package's files, copied beside the manifest
        s3.copy_object(
            Bucket=BUCKET,
            Key=prefix + entry["path"],
            CopySource={"Bucket": BUCKET, "Key": version_prefix("tiny", other.version) + entry["path"]},
        )
    s3.put_object(Bucket=BUCKET, Key=manifest_key("tiny", published.version), Body=json.dumps(forged).encode())
    # WHEN a fresh process resolves the version, or the alias pointing at it
    # THEN it refuses, naming the hash the files really have
    for wanted in (published.version, "prod"):
        with pytest.raises(
            ModelIntegrityError, match=rf"content hash is {other.version}, not its version {published.version}"
        ):
            ModelStore(BUCKET, s3).resolve("tiny", wanted)


def test_fetched_files_are_the_package_files(s3: Any, package: Path) -> None:
    published = publish(s3, BUCKET, package, name="tiny")
    files = ModelStore(BUCKET, s3).fetch_files(ModelStore(BUCKET, s3).resolve("tiny", published.version))
    assert files == {role: (package / entry.path).read_bytes() for role, entry in published.files.items()}


def test_an_unknown_version_names_the_model_and_what_exists(s3: Any, package: Path) -> None:
    published = publish(s3, BUCKET, package, name="tiny", alias="prod")
    with pytest.raises(ModelNotFoundError) as raised:
        ModelStore(BUCKET, s3).resolve("tiny", "staging")
    message = str(raised.value)
    assert "tiny" in message and "'staging'" in message
    assert "prod" in message and published.version in message


def test_an_unknown_model_name_is_not_found(s3: Any, package: Path) -> None:
    publish(s3, BUCKET, package, name="tiny")
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope'.*tiny"):
        ModelStore(BUCKET, s3).resolve("nope", "prod")


def test_a_half_published_version_does_not_exist(s3: Any, package: Path) -> None:
    # GIVEN a version whose files were uploaded but whose manifest was not (publish interrupted)
    manifest = Manifest.from_json((package / MANIFEST_FILE).read_text())
    for entry in manifest.files.values():
        s3.put_object(
            Bucket=BUCKET,
            Key=version_prefix("tiny", manifest.version) + entry.path,
            Body=(package / entry.path).read_bytes(),
        )
    # THEN readers do not see it
    with pytest.raises(ModelNotFoundError):
        ModelStore(BUCKET, s3).resolve("tiny", manifest.version)
    assert list_versions(s3, BUCKET, "tiny") == []


def test_an_alias_to_an_unpublished_version_is_not_found(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="models/tiny/aliases/prod.json", Body=json.dumps({"version": "0123456789ab"}))
    with pytest.raises(ModelNotFoundError, match="alias prod points at version 0123456789ab"):
        ModelStore(BUCKET, s3).resolve("tiny", "prod")


def test_one_corrupt_byte_in_the_params_is_an_integrity_error(s3: Any, package: Path) -> None:
    # GIVEN a published version whose params file then had one byte flipped in S3
    published = publish(s3, BUCKET, package, name="tiny")
    key = version_prefix("tiny", published.version) + published.files["params"].path
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    store = ModelStore(BUCKET, s3)
    # WHEN its files are fetched THEN the mismatch is reported, naming the file
    with pytest.raises(ModelIntegrityError, match=re.escape("params file model-0000.params: sha256")):
        store.fetch_files(store.resolve("tiny", published.version))


def test_a_missing_package_file_is_an_integrity_error(s3: Any, package: Path) -> None:
    published = publish(s3, BUCKET, package, name="tiny")
    s3.delete_object(Bucket=BUCKET, Key=version_prefix("tiny", published.version) + "labels.txt")
    store = ModelStore(BUCKET, s3)
    with pytest.raises(ModelIntegrityError, match=r"labels file labels\.txt.*missing"):
        store.fetch_files(store.resolve("tiny", published.version))


@pytest.mark.parametrize(
    "name, version", [("../etc", "prod"), ("tiny", "a/b"), ("tiny", ""), ("", "prod"), ("tiny", ".hidden")]
)
def test_unsafe_names_are_rejected_naming_the_value(s3: Any, name: str, version: str) -> None:
    with pytest.raises(InvalidRequestError, match="is not valid"):
        ModelStore(BUCKET, s3).resolve(name, version)


def test_publishing_the_same_content_again_is_a_no_op(s3: Any, package: Path) -> None:
    first = publish(s3, BUCKET, package, name="tiny")
    manifest_written = s3.head_object(Bucket=BUCKET, Key=manifest_key("tiny", first.version))["LastModified"]
    second = publish(s3, BUCKET, package, name="tiny")
    assert second.version == first.version
    assert s3.head_object(Bucket=BUCKET, Key=manifest_key("tiny", first.version))["LastModified"] == manifest_written
    assert [row["version"] for row in list_versions(s3, BUCKET, "tiny")] == [first.version]


def test_aliases_move_and_are_listed_with_their_version(s3: Any, package: Path, other_package: Path) -> None:
    # GIVEN two versions, prod on the first
    v1 = publish(s3, BUCKET, package, name="tiny", alias="prod")
    v2 = publish(s3, BUCKET, other_package, name="tiny", alias="canary")
    assert v1.version != v2.version
    # WHEN prod is promoted to the second
    set_alias(s3, BUCKET, "tiny", "prod", v2.version)
    # THEN resolving prod gives the second and the listing shows both aliases on it
    assert ModelStore(BUCKET, s3).resolve("tiny", "prod").version == v2.version
    rows = {row["version"]: row for row in list_versions(s3, BUCKET)}
    assert rows[v2.version]["aliases"] == ["canary", "prod"]
    assert rows[v1.version]["aliases"] == []
    assert rows[v1.version]["size"] > v1.files["params"].size
    assert rows[v1.version]["name"] == "tiny" and rows[v1.version]["created"].endswith("Z")


def test_an_alias_cannot_point_at_an_unpublished_version(s3: Any) -> None:
    with pytest.raises(ModelNotFoundError, match="no published version 0123456789ab"):
        set_alias(s3, BUCKET, "tiny", "prod", "0123456789ab")


def test_a_package_whose_labels_do_not_match_the_network_is_refused(tmp_path: Path) -> None:
    # GIVEN a 2-class network packaged with 3 labels (checksums and num_classes made consistent)
    manifest = tiny_package(tmp_path, ["cat", "dog"])
    labels = b"cat\ndog\nbird\n"
    (tmp_path / "labels.txt").write_bytes(labels)
    data = manifest.to_dict()
    data["num_classes"] = 3
    data["files"]["labels"].update(sha256=sha256_bytes(labels), size=len(labels))
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    # THEN validation runs the network and says what is wrong
    with pytest.raises(ModelIntegrityError, match=r"outputs shape \[1, 2\].*expected \[1, 3\]"):
        load_package_dir(tmp_path)


def test_a_folder_without_manifest_is_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=re.escape("has no manifest.json")):
        load_package_dir(tmp_path)


def test_s3_throttling_is_transient() -> None:
    class Throttled:
        def get_object(self, **_: Any) -> None:
            raise ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")

    with pytest.raises(TransientError, match="GetObject"):
        ModelStore(BUCKET, Throttled()).resolve("tiny", "prod")


def test_a_read_stops_one_byte_past_its_limit_and_a_missing_key_or_bucket_is_none(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="ten", Body=b"0123456789")
    assert read_object(s3, BUCKET, "ten", 4) == b"01234"  # one byte more: the caller sees it is too large
    assert read_object(s3, BUCKET, "ten", 10) == b"0123456789"
    assert read_object(s3, BUCKET, "missing", 4) is None
    assert read_object(s3, "no-such-bucket", "ten", 4) is None


def test_a_missing_model_bucket_is_model_not_found(s3: Any) -> None:
    with pytest.raises(
        ModelNotFoundError, match="the model bucket no-such-bucket does not exist \\(check MODEL_BUCKET\\)"
    ):
        ModelStore("no-such-bucket", s3).resolve("tiny", "prod")


def test_a_warm_process_keeps_one_store_per_bucket_until_its_cache_is_cleared() -> None:
    stores: dict[str, ModelStore] = {}
    first = cached_store(stores, BUCKET)
    assert cached_store(stores, BUCKET) is first
    assert cached_store(stores, "other-bucket").bucket == "other-bucket" and len(stores) == 2
    stores.clear()  # a cold start
    assert cached_store(stores, BUCKET) is not first
