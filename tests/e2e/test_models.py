"""Model packages end to end: versions, aliases, integrity and resolution, through the local stack and the CLI.

Everything here publishes under its own model names ("demo-alt", "demo-rt") so that other test
modules, which use "demo" and its alias "prod", are not disturbed.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from functions.common.manifest import LABELS_FILE, MANIFEST_FILE, PARAMS_FILE, SYMBOL_FILE, Manifest
from functions.common.model_store import version_prefix
from functions.common.request import META_MODEL, META_MODEL_VERSION
from functions.sink.core import output_key
from inferpipe.classify import execution_results
from inferpipe.cli import main
from inferpipe.packaging import import_files
from tests.e2e.conftest import DEMO_MODEL_DIR, executions_for_key, history, image_bytes, wait_for_execution

ALT = "demo-alt"


@dataclass(frozen=True)
class AltVersions:
    original: str  # the demo package as it is
    relabelled: str  # the same network, with "circle" renamed "round"
    relabelled_dir: Path


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _relabelled_copy(out_dir: Path, renames: dict[str, str]) -> Manifest:
    """The demo package with some classes renamed: same symbol and params, new labels, new manifest."""
    demo = Manifest.from_json((DEMO_MODEL_DIR / MANIFEST_FILE).read_text())
    labels = (DEMO_MODEL_DIR / LABELS_FILE).read_text().splitlines()
    edited = out_dir.parent / f"{out_dir.name}-labels.txt"
    edited.write_text("\n".join(renames.get(label, label) for label in labels) + "\n")
    return import_files(
        DEMO_MODEL_DIR / SYMBOL_FILE,
        DEMO_MODEL_DIR / PARAMS_FILE,
        edited,
        out_dir,
        name=ALT,
        spec=demo.input,
        architecture=demo.architecture,
        inference_mode=demo.inference_mode,
        source=f"relabelled demo {renames}",
    )


@pytest.fixture(scope="module")
def alt(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> AltVersions:
    """GIVEN model demo-alt has two published versions: the demo model, and the demo model with 'circle' renamed 'round'."""
    code, out, err = _run_cli(
        "model", "publish", str(DEMO_MODEL_DIR), "--name", ALT, "--endpoint-url", stack.endpoint_url
    )
    assert code == 0, err
    original = Manifest.from_json((DEMO_MODEL_DIR / MANIFEST_FILE).read_text()).version
    assert f"published {ALT} version {original}" in out and "S3 version id" in out

    relabelled_dir = tmp_path_factory.mktemp("models") / "demo-round"
    relabelled = _relabelled_copy(relabelled_dir, {"circle": "round"})
    code, out, err = _run_cli(
        "model", "publish", str(relabelled_dir), "--name", ALT, "--endpoint-url", stack.endpoint_url
    )
    assert code == 0, err
    assert relabelled.version != original and f"version {relabelled.version}" in out
    return AltVersions(original=original, relabelled=relabelled.version, relabelled_dir=relabelled_dir)


def _upload(stack: Any, data: bytes, model: str, version: str, tag: str) -> str:
    """Upload ``data`` under a fresh key asking for ``model`` at ``version`` (object metadata); returns the key."""
    key = f"models/{tag}-{uuid.uuid4().hex[:8]}.jpg"
    stack.client("s3").put_object(
        Bucket=stack.resources.buckets["input"],
        Key=key,
        Body=data,
        Metadata={META_MODEL: model, META_MODEL_VERSION: version},
    )
    return key


def _finish(stack: Any, key: str) -> dict[str, Any]:
    executions = executions_for_key(stack, key)
    assert len(executions) == 1
    return wait_for_execution(stack, executions[0]["executionArn"])


def _prediction(final: dict[str, Any], stack: Any) -> dict[str, Any]:
    assert final["status"] == "SUCCEEDED", final.get("cause")
    (entry,) = execution_results(stack, final["executionArn"])
    return entry["prediction"]


def _task_attempts(events: list[dict[str, Any]], state: str) -> int:
    """How many times a Task state scheduled its Lambda (0 = never entered, 1 = no retry)."""
    entered = [
        e["id"] for e in events if e["type"] == "TaskStateEntered" and e["stateEnteredEventDetails"]["name"] == state
    ]
    if not entered:
        return 0
    scheduled = [e["id"] for e in events if e["type"] == "LambdaFunctionScheduled" and e["id"] > entered[0]]
    following = [e["id"] for e in events if e["type"] == "TaskStateEntered" and e["id"] > entered[0]]
    return sum(1 for i in scheduled if not following or i < following[0])


def _records(stack: Any, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(S3 output record, DynamoDB item) for an input key."""
    res = stack.resources
    bucket = res.buckets["input"]
    body = (
        stack.client("s3")
        .get_object(
            Bucket=res.buckets["output"], Key=output_key(res.settings["OUTPUT_PREFIX"], {"bucket": bucket, "key": key})
        )["Body"]
        .read()
    )
    items = stack.client("dynamodb").query(
        TableName=res.table,
        KeyConditionExpression="#o = :o",
        ExpressionAttributeNames={"#o": "object"},
        ExpressionAttributeValues={":o": {"S": f"s3://{bucket}/{key}"}},
    )["Items"]
    assert len(items) == 1
    return json.loads(body), items[0]


def test_the_same_image_pinned_to_each_version_is_served_and_recorded_by_that_version(
    stack: Any, alt: AltVersions
) -> None:
    # GIVEN one image of a circle
    data = image_bytes("circle", seed=31)

    # WHEN it is uploaded twice, pinned once to each version of demo-alt
    keys = {version: _upload(stack, data, ALT, version, "pinned") for version in (alt.original, alt.relabelled)}
    finals = {version: _finish(stack, key) for version, key in keys.items()}

    # THEN each execution ran the version it asked for, and the labels differ where the models differ
    expected_label = {alt.original: "circle", alt.relabelled: "round"}
    for version, final in finals.items():
        prediction = _prediction(final, stack)
        assert prediction["model"] == {**prediction["model"], "name": ALT, "version": version}
        assert prediction["top_k"][0]["label"] == expected_label[version]

        # AND the S3 output record and the DynamoDB item carry the exact version and that label
        record, item = _records(stack, keys[version])
        assert record["model"]["name"] == ALT and record["model"]["version"] == version
        assert record["top1"]["label"] == expected_label[version]
        assert item["model"]["S"] == ALT and item["model_version"]["S"] == version
        assert item["label"]["S"] == expected_label[version]
    # AND the scores are the same network's: only the label names changed
    top = [_prediction(finals[v], stack)["top_k"][0] for v in (alt.original, alt.relabelled)]
    assert top[0]["index"] == top[1]["index"] and top[0]["probability"] == pytest.approx(top[1]["probability"])


def test_new_executions_follow_a_promoted_alias_while_pinned_ones_do_not(stack: Any, alt: AltVersions) -> None:
    data = image_bytes("circle", seed=32)
    url = ("--endpoint-url", stack.endpoint_url)

    # GIVEN alias 'stable' of demo-alt points at the original version
    code, out, err = _run_cli("model", "promote", ALT, alt.original, "--alias", "stable", *url)
    assert code == 0, err
    assert f"alias stable -> {alt.original}" in out
    before = _prediction(_finish(stack, _upload(stack, data, ALT, "stable", "alias-before")), stack)
    assert before["model"]["version"] == alt.original and before["top_k"][0]["label"] == "circle"

    # WHEN the alias is promoted to the relabelled version
    code, out, err = _run_cli("model", "promote", ALT, alt.relabelled, "--alias", "stable", *url)
    assert code == 0, err

    # THEN a new execution asking for 'stable' runs the relabelled version, while one pinned to the original still runs it
    follows = _upload(stack, data, ALT, "stable", "alias-after")
    pinned = _upload(stack, data, ALT, alt.original, "alias-pinned")
    after, still = _prediction(_finish(stack, follows), stack), _prediction(_finish(stack, pinned), stack)
    assert after["model"]["version"] == alt.relabelled and after["top_k"][0]["label"] == "round"
    assert still["model"]["version"] == alt.original and still["top_k"][0]["label"] == "circle"

    # AND `model list` shows both versions, readable sizes, and the alias on the relabelled one only
    code, out, err = _run_cli("model", "list", ALT, *url)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NAME", "VERSION", "PUBLISHED"]
    by_version = {row.split()[1]: row for row in rows}
    assert alt.original in by_version and alt.relabelled in by_version
    assert by_version[alt.relabelled].rstrip().endswith("stable") and "stable" not in by_version[alt.original]
    assert "MiB" in by_version[alt.original] or "KiB" in by_version[alt.original]


def test_a_corrupted_params_object_is_refused_with_model_integrity_error(
    stack: Any, alt: AltVersions, tmp_path: Path
) -> None:
    from functions.inference.handler import service

    # GIVEN a third version of demo-alt, published but never loaded, whose params object then loses one byte's integrity
    corrupt = _relabelled_copy(tmp_path / "demo-hoop", {"ring": "hoop"})
    code, _, err = _run_cli(
        "model", "publish", str(tmp_path / "demo-hoop"), "--name", ALT, "--endpoint-url", stack.endpoint_url
    )
    assert code == 0, err
    assert (ALT, corrupt.version) not in service.model_cache()
    s3, bucket = stack.client("s3"), stack.resources.buckets["models"]
    params_key = version_prefix(ALT, corrupt.version) + PARAMS_FILE
    params = bytearray(s3.get_object(Bucket=bucket, Key=params_key)["Body"].read())
    params[len(params) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=params_key, Body=bytes(params))

    # WHEN an image is classified pinned to that version
    final = _finish(stack, _upload(stack, image_bytes("ring", seed=33), ALT, corrupt.version, "corrupt"))

    # THEN the execution fails with ModelIntegrityError naming the params file, without retries
    assert final["status"] == "FAILED"
    assert final["error"] == "ModelIntegrityError"
    message = final["cause"]
    assert "params" in message and corrupt.version in message and "sha256" in message
    assert _task_attempts(history(stack, final["executionArn"]), "Inference") == 1
    # AND the corrupt model was never cached, so it is never served
    assert (ALT, corrupt.version) not in service.model_cache()


def test_a_half_published_version_is_never_picked_up(stack: Any, alt: AltVersions) -> None:
    # GIVEN a version whose files were uploaded but whose manifest never was (an interrupted publish)
    s3, bucket = stack.client("s3"), stack.resources.buckets["models"]
    half = "0badc0ffee00"
    for name in (SYMBOL_FILE, PARAMS_FILE, LABELS_FILE):
        s3.put_object(
            Bucket=bucket, Key=version_prefix(ALT, half) + name, Body=(alt.relabelled_dir / name).read_bytes()
        )

    # WHEN an image is classified pinned to it
    final = _finish(stack, _upload(stack, image_bytes("square", seed=34), ALT, half, "half"))

    # THEN the version does not exist: ModelNotFoundError naming it, and the listing does not show it
    assert final["status"] == "FAILED" and final["error"] == "ModelNotFoundError"
    assert half in final["cause"]
    code, out, _ = _run_cli("model", "list", ALT, "--endpoint-url", stack.endpoint_url)
    assert code == 0 and half not in out and alt.original in out


@pytest.mark.parametrize(
    ("model", "version", "named"),
    [
        (ALT, "fedcba987654", "fedcba987654"),  # a version never published
        (ALT, "no-such-alias", "no-such-alias"),  # an alias that does not exist
        ("no-such-model", "prod", "no-such-model"),  # a model that does not exist
    ],
)
def test_an_unknown_model_version_or_alias_fails_fast_without_retries(
    stack: Any, alt: AltVersions, model: str, version: str, named: str
) -> None:
    # WHEN an image asks for a model, version or alias nobody published
    final = _finish(stack, _upload(stack, image_bytes("circle", seed=35), model, version, "unknown"))

    # THEN the execution fails with ModelNotFoundError naming what was asked
    assert final["status"] == "FAILED" and final["error"] == "ModelNotFoundError"
    assert named in final["cause"]
    # AND its history shows a single Preprocess attempt and no inference at all
    events = history(stack, final["executionArn"])
    assert _task_attempts(events, "Preprocess") == 1
    assert _task_attempts(events, "Inference") == 0


# ---------------------------------------------------------------------------- the CLI alone


def test_model_import_with_pretrained_weights_but_no_internet_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN no way to reach the model zoo (an empty weights cache, a repository URL nothing listens on)
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet"))
    monkeypatch.setenv("MXNET_GLUON_REPO", "http://127.0.0.1:9/")

    # WHEN the user imports a model-zoo network with --pretrained
    code = main(["model", "import", "squeezenet1.0", "--pretrained", "--out", str(tmp_path / "pkg")])

    # THEN it exits non-zero saying internet access is needed, without a traceback, and writes no package
    captured = capsys.readouterr()
    assert code != 0
    assert "needs internet access" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""
    assert not (tmp_path / "pkg" / MANIFEST_FILE).exists()


def test_model_import_from_exported_files_round_trips_and_publishes(stack: Any, tmp_path: Path) -> None:
    # GIVEN the symbol, params and labels a user exported, and their input spec
    demo = Manifest.from_json((DEMO_MODEL_DIR / MANIFEST_FILE).read_text())
    spec = demo.input
    out = tmp_path / "imported"

    # WHEN they are imported as a package and published with an alias
    code, stdout, err = _run_cli(
        "model",
        "import",
        "--symbol",
        str(DEMO_MODEL_DIR / SYMBOL_FILE),
        "--params",
        str(DEMO_MODEL_DIR / PARAMS_FILE),
        "--labels",
        str(DEMO_MODEL_DIR / LABELS_FILE),
        "--name",
        "demo-rt",
        "--architecture",
        demo.architecture,
        "--inference-mode",
        demo.inference_mode,
        "--height",
        str(spec.height),
        "--width",
        str(spec.width),
        "--resize-shorter",
        str(spec.resize_shorter),
        "--mean",
        *map(str, spec.mean),
        "--std",
        *map(str, spec.std),
        "--out",
        str(out),
        "--publish",
        "--alias",
        "prod",
        "--endpoint-url",
        stack.endpoint_url,
    )

    # THEN the package holds the same files, hence the same content version, and the same input spec
    assert code == 0, err
    imported = Manifest.from_json((out / MANIFEST_FILE).read_text())
    assert imported.version == demo.version and imported.name == "demo-rt"
    assert imported.input == demo.input and imported.num_classes == demo.num_classes
    for name in (SYMBOL_FILE, PARAMS_FILE, LABELS_FILE):
        assert (out / name).read_bytes() == (DEMO_MODEL_DIR / name).read_bytes()
    # AND it was published under its own name with the alias
    assert f"published demo-rt version {demo.version}" in stdout and f"alias prod -> {demo.version}" in stdout
    code, listing, _ = _run_cli("model", "list", "demo-rt", "--endpoint-url", stack.endpoint_url)
    assert code == 0 and demo.version in listing and "prod" in listing


def test_model_import_needs_either_a_zoo_name_or_all_exported_files(tmp_path: Path) -> None:
    code, _out, err = _run_cli(
        "model", "import", "--symbol", str(DEMO_MODEL_DIR / SYMBOL_FILE), "--out", str(tmp_path / "x")
    )
    assert code == 2 and "--symbol, --params and --labels" in err and "Traceback" not in err


def _broken_copy(tmp_path: Path, breakage: str) -> Path:
    package = tmp_path / breakage
    shutil.copytree(DEMO_MODEL_DIR, package)
    if breakage == "missing-params":
        (package / PARAMS_FILE).unlink()
    elif breakage == "checksum-mismatch":
        data = bytearray((package / PARAMS_FILE).read_bytes())
        data[100] ^= 0xFF
        (package / PARAMS_FILE).write_bytes(bytes(data))
    elif breakage == "labels-vs-outputs":
        manifest = json.loads((package / MANIFEST_FILE).read_text())
        (package / LABELS_FILE).write_text("only\ntwo\n")
        from functions.common.manifest import sha256_file

        manifest["files"]["labels"].update(
            sha256=sha256_file(package / LABELS_FILE), size=(package / LABELS_FILE).stat().st_size
        )
        manifest["num_classes"] = 2
        (package / MANIFEST_FILE).write_text(json.dumps(manifest))
    return package


@pytest.mark.parametrize(
    ("breakage", "says"),
    [
        ("missing-params", "missing"),
        ("checksum-mismatch", "sha256"),
        ("labels-vs-outputs", "one score per label"),
    ],
)
def test_publishing_a_bad_package_is_a_clear_error_not_a_traceback(tmp_path: Path, breakage: str, says: str) -> None:
    # GIVEN a package folder with one thing wrong
    package = _broken_copy(tmp_path, breakage)

    # WHEN the user publishes it (no stack is needed: the package is checked before any AWS call)
    code, out, err = _run_cli(
        "model", "publish", str(package), "--name", "demo-bad", "--endpoint-url", "http://127.0.0.1:9"
    )

    # THEN it exits non-zero with ModelIntegrityError saying what is wrong, and no traceback
    assert code != 0 and out == ""
    assert "ModelIntegrityError" in err and says in err and "Traceback" not in err
