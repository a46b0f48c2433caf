"""The face-parsing.PyTorch BiSeNet, written here in plain torch, to load users' ``79999_iter.pth``.

Architecture (zllrunning/face-parsing.PyTorch, 19 classes): a ResNet-18 *context path* whose 1/8
feature also replaces the spatial path; attention refinement modules (ARM) on the 1/16 and 1/32
features plus a global-average context; a feature fusion module (FFM); three output heads
(``conv_out`` on the fused 1/8 feature, ``conv_out16``/``conv_out32`` auxiliary). Parameter names match
that project's released state dict, so its file loads unchanged with
``torch.load(path, map_location="cpu", weights_only=True)`` (no unpickling of code).

Input convention (what the released weights expect):

* RGB, resized to ``BISENET_INPUT_SIZE`` x ``BISENET_INPUT_SIZE`` (512 x 512, bilinear);
* scaled to [0, 1] then normalised with the ImageNet mean/std ``IMAGENET_MEAN``/``IMAGENET_STD``;
* a ``(B, 3, 512, 512)`` float tensor; the first output ``(B, 19, 512, 512)`` holds the logits.

Outputs are in the **BiSeNet label order** (``facemogle.labels.BISENET_CLASS_NAMES``); convert ids with
``facemogle.labels.BISENET_TO_OFFICIAL`` or reorder logit channels with ``OFFICIAL_TO_BISENET``.
``BiSeNetParser`` does that behind the ``parse`` API of every face parser (official ids out), and
``facemogle.parser.load_parser(FILE.pth)`` returns one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facemogle.errors import CheckpointError
from facemogle.labels import NUM_CLASSES, OFFICIAL_TO_BISENET
from facemogle.parser.inference import RGB_CHANNELS, PhotoParserMixin, resize_photo

BISENET_INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Channel widths of the released model.
RESNET_STEM_CHANNELS = 64
RESNET_STAGE_CHANNELS = (64, 128, 256, 512)
RESNET_BLOCKS_PER_STAGE = 2
CONTEXT_CHANNELS = 128
FUSION_CHANNELS = 256
AUX_HEAD_CHANNELS = 64
FUSION_ATTENTION_REDUCTION = 4

# BatchNorm counters: absent from files written by old torch versions, never needed for inference.
_OPTIONAL_KEY_SUFFIX = "num_batches_tracked"
# Files saved from nn.DataParallel carry this prefix on every key.
_DATA_PARALLEL_PREFIX = "module."


class ConvBNReLU(nn.Module):
    """``relu(bn(conv(x)))`` with a bias-free convolution (keys ``conv.*``, ``bn.*``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN with a (projected when shapes change) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, RESNET_STEM_CHANNELS, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET_STEM_CHANNELS)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = RESNET_STEM_CHANNELS
        for index, out_channels in enumerate(RESNET_STAGE_CHANNELS):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_channels, out_channels, stride)]
            blocks += [BasicBlock(out_channels, out_channels) for _ in range(RESNET_BLOCKS_PER_STAGE - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        feat8 = self.layer2(self.layer1(x))  # (B, 128, H/8, W/8)
        feat16 = self.layer3(feat8)  # (B, 256, H/16, W/16)
        feat32 = self.layer4(feat16)  # (B, 512, H/32, W/32)
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    """3x3 ConvBNReLU, then a channel gate ``sigmoid(bn(conv1x1(global_avg)))``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))  # (B, C, 1, 1)
        return feat * gate


class ContextPath(nn.Module):
    """ResNet-18 + ARMs + global context; returns (res 1/8, context 1/8, context 1/16) features."""

    def __init__(self):
        super().__init__()
        feat16_channels, feat32_channels = RESNET_STAGE_CHANNELS[-2:]
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(feat16_channels, CONTEXT_CHANNELS)
        self.arm32 = AttentionRefinementModule(feat32_channels, CONTEXT_CHANNELS)
        self.conv_head32 = ConvBNReLU(CONTEXT_CHANNELS, CONTEXT_CHANNELS)
        self.conv_head16 = ConvBNReLU(CONTEXT_CHANNELS, CONTEXT_CHANNELS)
        self.conv_avg = ConvBNReLU(feat32_channels, CONTEXT_CHANNELS, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))  # (B, 128, 1, 1)
        feat32_sum = self.arm32(feat32) + global_context  # (B, 128, H/32, W/32)
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[-2:], mode="nearest"))  # 1/16
        feat16_sum = self.arm16(feat16) + feat32_up  # (B, 128, H/16, W/16)
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[-2:], mode="nearest"))  # 1/8
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    """Concatenate, 1x1 ConvBNReLU, then ``feat + feat * channel_gate(feat)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // FUSION_ATTENTION_REDUCTION, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // FUSION_ATTENTION_REDUCTION, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))  # (B, C, 1, 1)
        return feat + feat * gate


class BiSeNetOutput(nn.Module):
    """3x3 ConvBNReLU then a bias-free 1x1 classifier."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """face-parsing.PyTorch BiSeNet. ``forward((B, 3, H, W))`` -> three ``(B, num_classes, H, W)`` logits.

    The first output is the prediction; the other two are the auxiliary heads used in training.
    Labels are in the BiSeNet order. See the module docstring for the input convention.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        spatial_channels = RESNET_STAGE_CHANNELS[1]
        self.ffm = FeatureFusionModule(spatial_channels + CONTEXT_CHANNELS, FUSION_CHANNELS)
        self.conv_out = BiSeNetOutput(FUSION_CHANNELS, FUSION_CHANNELS, num_classes)
        self.conv_out16 = BiSeNetOutput(CONTEXT_CHANNELS, AUX_HEAD_CHANNELS, num_classes)
        self.conv_out32 = BiSeNetOutput(CONTEXT_CHANNELS, AUX_HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        fused = self.ffm(feat_res8, feat_cp8)  # (B, 256, H/8, W/8)
        outputs = (self.conv_out(fused), self.conv_out16(feat_cp8), self.conv_out32(feat_cp16))
        return tuple(F.interpolate(out, size, mode="bilinear", align_corners=True) for out in outputs)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits only, at the feature resolution (B, num_classes, H/8, W/8), BiSeNet order.

        Cheaper than ``forward`` when the caller upsamples to its own output size anyway.
        """
        feat_res8, feat_cp8, _ = self.cp(x)
        return self.conv_out(self.ffm(feat_res8, feat_cp8))


def load_bisenet(path: str | os.PathLike) -> BiSeNet:
    """Build a ``BiSeNet`` from a face-parsing.PyTorch ``.pth`` state dict (eval mode, CPU).

    Read with ``torch.load(..., weights_only=True)``. A ``module.`` prefix (DataParallel) is
    stripped; BatchNorm ``num_batches_tracked`` counters may be absent. Any other missing or
    unexpected key, or a shape mismatch, raises ``CheckpointError`` naming them.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"BiSeNet checkpoint {str(path)!r} does not exist") from None
    except Exception as err:  # torch raises many types for corrupt / pickled-code files
        raise CheckpointError(
            f"{str(path)!r} is not a loadable BiSeNet state dict (weights_only=True): {type(err).__name__}: {err}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors")
    state = {k[len(_DATA_PARALLEL_PREFIX) :] if k.startswith(_DATA_PARALLEL_PREFIX) else k: v for k, v in state.items()}
    model = BiSeNet()
    check_state_dict(model, state, name=str(path))
    model.load_state_dict(state, strict=False)
    return model.eval()


def check_state_dict(model: nn.Module, state: dict, *, name: str) -> None:
    """Raise ``CheckpointError`` listing missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEY_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{name} is not a face-parsing.PyTorch BiSeNet checkpoint: " + "; ".join(problems))


class BiSeNetParser(nn.Module, PhotoParserMixin):
    """A face-parsing.PyTorch BiSeNet behind the ``parse`` API (official ids out).

    Photos are resized to 512 x 512 and ImageNet-normalised (see the module docstring); the main
    head's logits are reordered to the official label order, upsampled to 512 x 512
    (``align_corners=True``, as in the original), then to each photo's size.
    """

    def __init__(self, net: BiSeNet):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, RGB_CHANNELS, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, RGB_CHANNELS, 1, 1), persistent=False)
        self.register_buffer("official_to_bisenet", torch.tensor(OFFICIAL_TO_BISENET), persistent=False)

    def _pixel_values(self, photos: list[Image.Image]) -> torch.Tensor:
        batch = np.stack([resize_photo(photo, BISENET_INPUT_SIZE) for photo in photos])  # (B, 512, 512, 3)
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().to(self.mean.device) / 255.0
        return (pixels - self.mean) / self.std

    def _official_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits = self.net.predict_logits(pixel_values)  # (B, 19, 64, 64), BiSeNet order
        logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=True)
        return logits[:, self.official_to_bisenet]  # (B, 19, 512, 512), official order
