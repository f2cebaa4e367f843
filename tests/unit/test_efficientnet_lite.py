"""EfficientNet-Lite0 in MXNet reproduces the original network, and classifies real photos correctly.

The reference logits were produced once by scripts/reference_lite0_logits.py: an independent
PyTorch implementation (explicit TF-SAME pads), the weights loaded by ``torch.load`` itself.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import mxnet as mx
import numpy as np
import pytest

from functions.common.errors import ModelIntegrityError
from functions.preprocess.transform import normalise, to_tensor
from inferpipe.pretrained.efficientnet_lite import LITE0_SPEC, efficientnet_lite0, load_state_dict, weights_path
from inferpipe.pretrained.imagenet import imagenet_labels
from inferpipe.pretrained.legacy_pth import read_state_dict
from inferpipe.pretrained.photos import demo_photos

if TYPE_CHECKING:
    from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "lite0_reference_logits.npz"
#: Largest |logit difference| allowed vs PyTorch: float32 summation order differs between the
#: frameworks; measured 9e-6 with logits up to 6.9 in magnitude.
LOGIT_TOLERANCE = 1e-4

sys.path.insert(0, str(ROOT / "scripts"))
from reference_lite0_logits import reference_inputs  # noqa: E402  (scripts/ is not a package)


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return read_state_dict(weights_path())


@pytest.fixture(scope="module")
def net(tensors: dict[str, np.ndarray]) -> mx.gluon.HybridBlock:
    net = efficientnet_lite0()
    load_state_dict(net, tensors)
    net.hybridize()
    return net


def _probabilities(net: mx.gluon.HybridBlock, image: Image.Image) -> np.ndarray:
    logits = net(mx.nd.array(to_tensor(image, LITE0_SPEC)[None])).asnumpy()[0].astype(np.float64)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


@pytest.mark.parametrize("same", ["flip", "slice", "pad"])
def test_logits_match_pytorch_on_the_reference_inputs(tensors: dict[str, np.ndarray], same: str) -> None:
    # GIVEN the committed PyTorch logits and the same seeded inputs
    reference = np.load(FIXTURE)
    inputs = reference_inputs()
    assert hashlib.sha256(inputs.tobytes()).hexdigest() == str(reference["inputs_sha256"])
    # WHEN our network (either way of writing SAME padding) runs them
    net = efficientnet_lite0(same)
    load_state_dict(net, tensors)
    net.hybridize()
    logits = net(mx.nd.array(inputs)).asnumpy()
    # THEN every logit matches
    assert np.abs(logits - reference["logits"]).max() < LOGIT_TOLERANCE
    assert logits.argmax(1).tolist() == reference["logits"].argmax(1).tolist()


def test_a_cat_is_a_cat_and_coffee_is_espresso(net: mx.gluon.HybridBlock) -> None:
    labels = imagenet_labels()
    photos = demo_photos()
    top5 = {
        name: [labels[i] for i in np.argsort(-_probabilities(net, photo.image))[:5]] for name, photo in photos.items()
    }
    assert {"tiger cat", "tabby", "Egyptian cat"} & set(top5["chelsea"])
    assert {"espresso", "cup"} & set(top5["coffee"])
    for name, photo in photos.items():  # every demo photo's top-1 is one of its accepted labels
        assert top5[name][0] in photo.expected, (name, top5[name])


def test_espresso_is_confident_and_noise_is_not(net: mx.gluon.HybridBlock) -> None:
    from PIL import Image

    assert _probabilities(net, demo_photos()["coffee"].image).max() > 0.9
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    assert _probabilities(net, noise).max() < 0.5


def test_the_input_spec_is_lite0s_own_normalisation() -> None:
    from PIL import Image

    # (x - 127) / 128 on 0..255 pixels: 127 -> 0, 255 -> 1, 0 -> -127/128
    pixels = Image.fromarray(np.array([[[127, 255, 0]]], dtype=np.uint8))
    np.testing.assert_allclose(normalise(pixels, LITE0_SPEC).ravel(), [0.0, 1.0, -127 / 128], atol=1e-6)
    assert (LITE0_SPEC.height, LITE0_SPEC.width, LITE0_SPEC.resize_shorter) == (224, 224, 256)


def test_labels_are_the_1000_imagenet_classes_in_index_order() -> None:
    labels = imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000
    assert (labels[0], labels[1], labels[9], labels[281], labels[967]) == (
        "tench",
        "goldfish",
        "ostrich",
        "tabby",
        "espresso",
    )
    assert (labels[134], labels[517]) == ("crane (bird)", "crane (machine)")


def test_weights_that_do_not_fit_are_refused_naming_each_problem(tensors: dict[str, np.ndarray]) -> None:
    broken = dict(tensors)
    del broken["_blocks.3._depthwise_conv.weight"]
    broken["_blocks.16._se_reduce.weight"] = np.zeros((4, 4), np.float32)
    broken["_fc.weight"] = np.zeros((10, 1280), np.float32)
    with pytest.raises(ModelIntegrityError) as raised:
        load_state_dict(efficientnet_lite0(), broken)
    message = str(raised.value)
    assert "1 missing: _blocks.3._depthwise_conv.weight" in message
    assert "1 unexpected: _blocks.16._se_reduce.weight" in message
    assert "_fc.weight [10, 1280] (expected [1000, 1280] for fc.weight)" in message
