"""The chapter on norms in transformers: small models and measurements.

- ``Block``/``tiny_transformer``: a transformer encoder block with its norm before the
  residual branches (pre-LN) or after the sums (post-LN), on normtut's LayerNorm or RMSNorm;
  ``gradient_norms_at_init`` measures the gradient of every block at initialisation and
  ``plot_gradient_norms`` draws them, per layer, for both placements.
- ``ChannelsLayerNorm``: LayerNorm over the channels of an image at each position, as
  ConvNeXt uses it.
- ``SmallResNet`` and ``record_norm_inputs``: a model written with torch.nn layers, to run
  on normtut's layers with ``convert_norm_layers``, and what each norm layer sees.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

import normtut


def make_norm(kind: str, width: int) -> nn.Module:
    """normtut's ``LayerNorm(width)`` (kind "layer") or ``RMSNorm(width)`` (kind "rms")."""
    if kind == "layer":
        return normtut.LayerNorm(width)
    if kind == "rms":
        return normtut.RMSNorm(width)
    raise ValueError(f'kind must be "layer" or "rms", got {kind!r}')


class Block(nn.Module):
    """Self-attention then an MLP, each a residual branch, with a norm around each.

    post-LN (the original Transformer): x <- norm(x + f(x)), the norm on the main path.
    pre-LN: x <- x + f(norm(x)), the main path left alone.
    """

    def __init__(self, width: int, heads: int, pre_ln: bool, norm: str = "layer") -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.norm1, self.norm2 = make_norm(norm, width), make_norm(norm, width)

    def _attend(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_ln:
            x = x + self._attend(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self._attend(x))
        return self.norm2(x + self.mlp(x))


def tiny_transformer(
    depth: int, width: int, heads: int, pre_ln: bool, norm: str = "layer"
) -> nn.Sequential:
    """``depth`` blocks; a pre-LN stack ends with one more norm (its main path has none)."""
    blocks: list[nn.Module] = [Block(width, heads, pre_ln, norm) for _ in range(depth)]
    if pre_ln:
        blocks.append(make_norm(norm, width))
    return nn.Sequential(*blocks)


def gradient_norms_at_init(
    pre_ln: bool,
    norm: str = "layer",
    depth: int = 12,
    width: int = 64,
    heads: int = 4,
    tokens: int = 32,
    batch: int = 16,
    seed: int = 0,
) -> list[float]:
    """||dL/dW|| of each block's weights (all its matrices together), from the first block to
    the last, for a freshly initialised stack and a random regression target."""
    torch.manual_seed(seed)
    model = tiny_transformer(depth, width, heads, pre_ln, norm)
    x = torch.randn(batch, tokens, width)
    target = torch.randn(batch, tokens, width)
    loss = (model(x) - target).square().mean()
    loss.backward()
    norms = []
    for block in model[:depth]:
        grads = [p.grad for name, p in block.named_parameters() if name.endswith("weight")]
        norms.append(float(torch.sqrt(sum(g.square().sum() for g in grads))))
    return norms


def plot_gradient_norms(post: list[float], pre: list[float]) -> Figure:
    """The gradient norm of each block at initialisation, post-LN and pre-LN (log scale)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    layers = range(1, len(post) + 1)
    ax.plot(layers, post, "o-", label="post-LN: norm(x + f(x))")
    ax.plot(layers, pre, "s-", label="pre-LN: x + f(norm(x))")
    ax.set_yscale("log")
    ax.set_xlabel("block (1 = nearest the input)")
    ax.set_ylabel("gradient norm of the block's weights")
    ax.set_xticks(list(layers))
    ax.legend(frameon=False)
    ax.set_title("At initialisation, before any training step")
    fig.tight_layout()
    return fig


class ChannelsLayerNorm(nn.Module):
    """LayerNorm over the C channels of an (N, C, H, W) image, separately at every position.

    ConvNeXt's "LayerNorm": move C last, normalize over it, move it back. Not GroupNorm(1, C),
    which normalizes over (C, H, W) at once.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = normtut.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with BatchNorm, plus the shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallResNet(nn.Module):
    """A ResNet-style classifier written with torch.nn's norm layers (BN, GN, LN)."""

    def __init__(self, channels: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.blocks = nn.Sequential(BasicBlock(channels), BasicBlock(channels))
        self.head_norm = nn.GroupNorm(2, channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.features = nn.LayerNorm(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        y = self.head_norm(self.blocks(self.stem(x)))
        return self.fc(self.features(self.pool(y).flatten(1)))


NORM_LAYERS = tuple(
    cls for name in normtut.__all__ if isinstance(cls := getattr(normtut, name), type)
)


def record_norm_inputs(model: nn.Module, x: Tensor) -> list[tuple[str, str, float, float]]:
    """Run ``model(x)`` once and return, for every normtut norm layer in call order, its name,
    class, and the mean and standard deviation of the input it received (forward hooks)."""
    seen: list[tuple[str, str, float, float]] = []
    handles = []
    for name, module in model.named_modules():
        if type(module) in NORM_LAYERS and name:

            def hook(m, args, out, name=name):
                t = args[0].detach()
                seen.append((name, type(m).__name__, t.mean().item(), t.std().item()))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen
