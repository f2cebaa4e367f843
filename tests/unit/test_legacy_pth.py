"""The restricted reader of legacy PyTorch state dicts: the real checkpoint, and files it must refuse."""

from __future__ import annotations

import io
import pickle
import re
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from inferpipe.pretrained.efficientnet_lite import weights_path
from inferpipe.pretrained.legacy_pth import MAGIC_NUMBER, PROTOCOL_VERSION, UntrustedPickleError, read_state_dict


def _legacy_file(path: Path, body: bytes, storages: list[tuple[str, np.ndarray]]) -> Path:
    """A legacy-format file: the three headers, ``body`` (a pickle), the key list, the storages."""
    out = io.BytesIO()
    for header in (
        MAGIC_NUMBER,
        PROTOCOL_VERSION,
        {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {}},
    ):
        pickle.dump(header, out, protocol=2)
    out.write(body)
    pickle.dump([key for key, _ in storages], out, protocol=2)
    for _, array in storages:
        out.write(struct.pack("<q", array.size))
        out.write(array.astype("<f4").tobytes())
    path.write_bytes(out.getvalue())
    return path


def _tensor_pickle(key: str, numel: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """The pickle torch writes for {"w": tensor}: OrderedDict of _rebuild_tensor_v2(storage, 0, shape, stride, ...)."""

    # Written opcode by opcode (protocol 2, as torch writes it), so the test needs no torch.
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def tup(items: list[bytes]) -> bytes:
        return b"(" + b"".join(items) + b"t"

    def integer(value: int) -> bytes:
        return b"I" + str(value).encode() + b"\n"

    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value.encode())) + value.encode()

    args = tup(
        [
            tup([text("storage"), glob("torch", "FloatStorage"), text(key), text("cpu"), integer(numel), b"N"]) + b"Q",
            integer(0),
            tup([integer(s) for s in shape]),
            tup([integer(s) for s in stride]),
            b"\x89",
            glob("collections", "OrderedDict") + b")R",
        ]
    )
    tensor = glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    return b"\x80\x02" + glob("collections", "OrderedDict") + b")R" + text("w") + tensor + b"s."


def test_the_shipped_checkpoint_reads_as_296_named_float_tensors_without_torch() -> None:
    tensors = read_state_dict(weights_path())
    assert len(tensors) == 296
    floats = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    assert sum(v.size for v in floats.values()) == 4_694_024  # 4.69 M parameters
    assert all(v.dtype == np.float32 and v.flags["C_CONTIGUOUS"] for v in floats.values())
    # stored with non-standard strides (converted from TensorFlow): read back in logical order
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert tensors["_fc.weight"].shape == (1000, 1280)
    assert np.all(tensors["_bn0.running_var"] >= 0)  # variances; a few channels are dead (0)


def test_a_hand_written_state_dict_reads_back_with_its_strides(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float32)
    body = _tensor_pickle("k0", 6, (3, 2), (1, 3))  # a transposed 2×3 storage
    tensors = read_state_dict(_legacy_file(tmp_path / "w.pth", body, [("k0", data)]))
    assert list(tensors) == ["w"]
    np.testing.assert_array_equal(tensors["w"], data.reshape(2, 3).T)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("torch", "load"),
        ("numpy.core.multiarray", "_reconstruct"),
    ],
)
def test_a_file_naming_any_other_global_is_refused_before_anything_is_called(
    tmp_path: Path, module: str, name: str
) -> None:
    body = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n(X\x04\x00\x00\x00truetR."
    with pytest.raises(UntrustedPickleError, match=f"asks for {module}.{name}"):
        read_state_dict(_legacy_file(tmp_path / "evil.pth", body, []))


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    body = _tensor_pickle("k0", 4, (3, 2), (2, 1))  # needs 6 elements, storage claims 4
    with pytest.raises(UntrustedPickleError, match="reaches past its storage"):
        read_state_dict(_legacy_file(tmp_path / "w.pth", body, [("k0", np.zeros(4, np.float32))]))


def test_truncated_zip_and_foreign_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    real = weights_path().read_bytes()
    (tmp_path / "cut.pth").write_bytes(real[: len(real) // 2])
    with pytest.raises(UntrustedPickleError, match="ends inside storage"):
        read_state_dict(tmp_path / "cut.pth")
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(UntrustedPickleError, match="zip-format"):
        read_state_dict(tmp_path / "zip.pth")
    (tmp_path / "other.pth").write_bytes(pickle.dumps(12345))
    with pytest.raises(UntrustedPickleError, match="wrong magic number"):
        read_state_dict(tmp_path / "other.pth")
    (tmp_path / "dict.pth").write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(UntrustedPickleError, match=re.escape("asks for collections.OrderedDict")):
        read_state_dict(tmp_path / "dict.pth")  # even a harmless global is refused where only plain data belongs
