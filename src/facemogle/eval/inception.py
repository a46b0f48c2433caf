"""The FID Inception-v3: the TensorFlow "2015-12-05" Inception graph that FID is defined with.

FID and KID (METHOD.md section 8) use the 2048-d ``pool3`` features of the Inception-v3 graph that
the original TensorFlow FID code shipped. It differs from the ImageNet Inception-v3 of model zoos
in four places, all reproduced here:

* the average poolings of the ``InceptionA`` / ``InceptionC`` / first ``InceptionE`` blocks ignore
  the zero padding (``count_include_pad=False``, TensorFlow's ``SAME`` average pooling);
* the last block (``Mixed_7c``) pools its side branch with a **max** pooling;
* the classifier has 1008 outputs;
* inputs are pixel values in ``[0, 255]`` mapped to ``(x - 128) / 128`` (the graph's own ``Sub`` and
  ``Mul`` nodes; clean-fid feeds it exactly so). pytorch-fid maps ``[0, 1]`` inputs with ``2x - 1``
  instead, i.e. ``(x - 127.5) / 127.5``: set ``input_offset=127.5, input_scale=1/127.5`` to match it.

Parameter names follow the widely used PyTorch port of those weights
(``pt_inception-2015-12-05-6726825d.pth`` from the pytorch-fid releases, a plain state dict), so
``FIDInceptionV3.from_weights_file`` loads that file as it is, with ``torch.load(weights_only=True)``;
a ``.safetensors`` copy works too.

The network expects ``(B, 3, 299, 299)`` inputs: resizing is the feature extractor's job
(``facemogle.eval.features.clean_resize``, clean-fid's "clean" PIL bicubic resize).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from facemogle.errors import CheckpointError

#: Side of the square images the graph was built for (clean-fid resizes every image to it).
INCEPTION_IMAGE_SIZE: int = 299
#: Width of the ``pool3`` features FID is computed on.
INCEPTION_FEATURE_DIM: int = 2048
#: Classes of the 2015-12-05 graph's classifier (ImageNet 1000 + 8 unused).
INCEPTION_NUM_CLASSES: int = 1008
#: Pixel value mapped to 0 by the graph's input normalisation.
TF_INPUT_OFFSET: float = 128.0
#: Scale of the graph's input normalisation (``(x - 128) * scale``).
TF_INPUT_SCALE: float = 1.0 / 128.0
#: Batch-norm epsilon of the TensorFlow graph.
BATCH_NORM_EPS: float = 1e-3


class BasicConv2d(nn.Module):
    """Convolution without bias -> batch norm -> ReLU (``conv`` and ``bn`` parameter names)."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pooling that averages only real pixels (TensorFlow ``SAME``)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (``Mixed_5b/c/d``): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_same(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], dim=1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (``Mixed_6a``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``Mixed_6b..e``)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_avg_pool_same(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], dim=1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (``Mixed_7a``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], dim=1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 convolutions (``Mixed_7b``, ``Mixed_7c``).

    ``pool="avg"`` (``Mixed_7b``) or ``pool="max"`` (``Mixed_7c``, a quirk of the TF graph).
    """

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)

        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], dim=1)

        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], dim=1)

        if self.pool == "avg":
            pooled = _avg_pool_same(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], dim=1)


class FIDInceptionV3(nn.Module, ConfigMixin):
    """Inception-v3 of the TensorFlow FID graph, returning ``pool3`` features.

    Input: ``(B, 3, 299, 299)`` float pixel values in ``[0, 255]`` (not normalised).
    Output of ``forward``: ``(B, 2048)`` pooled features; ``logits`` gives ``(B, 1008)``.
    """

    config_name = "inception_config.json"

    @register_to_config
    def __init__(
        self,
        num_classes: int = INCEPTION_NUM_CLASSES,
        input_offset: float = TF_INPUT_OFFSET,
        input_scale: float = TF_INPUT_SCALE,
    ):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(INCEPTION_FEATURE_DIM, pool="max")
        self.fc = nn.Linear(INCEPTION_FEATURE_DIM, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 299, 299)`` pixel values in ``[0, 255]`` -> ``(B, 2048)`` pool3 features."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB pixels, got shape {tuple(pixels.shape)}")
        x = (pixels - self.config.input_offset) * self.config.input_scale
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d):
            x = block(x)  # (B, 256 / 288 / 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)  # (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7b(x)  # (B, 2048, 8, 8)
        x = self.Mixed_7c(x)  # (B, 2048, 8, 8)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 2048)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 299, 299)`` pixels -> ``(B, num_classes)`` classifier logits (Inception Score)."""
        return self.fc(self.forward(pixels))

    # ----------------------------------------------------------------------------------------
    # Weights
    # ----------------------------------------------------------------------------------------

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a pytorch-fid-layout state dict (strict, except batch-norm step counters).

        ``num_batches_tracked`` buffers may be absent (the original file predates them), and an
        ``AuxLogits.*`` head, if present, is ignored (the FID graph has none).

        Raises:
            CheckpointError: keys are missing or unexpected, or a shape does not match.
        """
        expected = self.state_dict()
        optional = {key for key in expected if key.endswith("num_batches_tracked")}
        provided = {key: value for key, value in state_dict.items() if not key.startswith("AuxLogits.")}
        missing = sorted(set(expected) - set(provided) - optional)
        unexpected = sorted(set(provided) - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
            raise CheckpointError(
                "not an FID Inception-v3 state dict (pytorch-fid layout): " + "; ".join(parts)
            )
        for key, value in provided.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    f"FID Inception-v3 weight {key} has shape {tuple(value.shape)}, "
                    f"expected {tuple(expected[key].shape)}"
                )
        merged = dict(expected)
        merged.update({key: value.to(expected[key].dtype) for key, value in provided.items()})
        self.load_state_dict(merged, strict=True)

    @classmethod
    def from_weights_file(cls, path: str | os.PathLike, **config) -> "FIDInceptionV3":
        """Build the network and load ``path`` (``.pth``/``.pt`` state dict or ``.safetensors``).

        ``config`` overrides the constructor options (e.g. pytorch-fid's input normalisation).
        Returns the model in eval mode, float32, on the CPU.

        Raises:
            CheckpointError: the file is missing, not a weights file, or not this architecture.
        """
        from facemogle.files import read_state_dict_file

        state_dict = read_state_dict_file(path)
        model = cls(**config)
        try:
            model.load_weights(state_dict)
        except CheckpointError as error:
            raise CheckpointError(f"{os.fspath(path)}: {error}") from None
        return model.eval()
