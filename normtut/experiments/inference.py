"""BatchNorm at inference (chapter 12): what folding does to filters and to rounding, and what
``eval()``, ``torch.no_grad()`` and ``torch.inference_mode()`` each switch.

``folded_filters`` draws a convolution's filters before and after folding the BatchNorm that
follows it; ``rounding_errors`` compares a model with its folded copy in a low-precision
dtype against float64; ``switches`` runs a BatchNorm layer under each mode and context.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from .. import functional as F
from ..fusion import fold_batchnorm, fuse_conv_bn_eval


def channel_scale(bn: nn.Module) -> Tensor:
    """s_c = gamma_c / sqrt(running_var_c + eps): the factor folding puts on filter c."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    return (gamma / torch.sqrt(bn.running_var + bn.eps)).detach()


def folded_filters(conv: nn.Conv2d, bn: nn.Module, in_channel: int = 0) -> Figure:
    """Each output channel's filter (input channel ``in_channel``) before and after folding.

    Top row: W_c of ``conv``; bottom row: W'_c = s_c W_c of the folded convolution, on the
    same colour scale, with s_c under each filter. ``conv`` and ``bn`` must be in eval mode.
    """
    fused = fuse_conv_bn_eval(conv, bn)
    before = conv.weight[:, in_channel].detach()
    after = fused.weight[:, in_channel].detach()
    scale = channel_scale(bn)
    C = before.shape[0]
    limit = float(torch.cat([before, after]).abs().max())
    fig, axes = plt.subplots(2, C, figsize=(1.45 * C + 1.2, 3.5), squeeze=False)
    for c in range(C):
        for row, w in enumerate((before, after)):
            ax = axes[row, c]
            image = ax.imshow(w[c].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, c].set_title(f"channel {c}", fontsize=10)
        axes[1, c].set_xlabel(f"$s_{{{c}}}$ = {scale[c]:.2f}", fontsize=10)
    axes[0, 0].set_ylabel("conv $W_c$", fontsize=11)
    axes[1, 0].set_ylabel("folded $W'_c$", fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.88, bottom=0.12, top=0.9, wspace=0.08, hspace=0.1)
    fig.colorbar(image, cax=fig.add_axes((0.9, 0.15, 0.015, 0.7)))
    return fig


@torch.no_grad()
def rounding_errors(model: nn.Module, x: Tensor, dtype: torch.dtype) -> dict[str, dict[str, float]]:
    """How far ``model`` and its folded copies land from float64 when run in ``dtype``.

    Three variants: the model as it is, folded in its own dtype and then cast, and cast to
    ``dtype`` first and then folded (the folding arithmetic itself in ``dtype``). For each:
    the mean and the largest absolute difference from the float64 output, and how many
    rows' argmax differ from float64's. The model is not changed; the copies run in eval
    mode.
    """
    exact = copy.deepcopy(model).double().eval()(x.double())
    variants = {
        "not folded": copy.deepcopy(model).to(dtype),
        "folded, then cast": fold_batchnorm(model).to(dtype),
        "cast, then folded": fold_batchnorm(copy.deepcopy(model).to(dtype)),
    }
    rows = {}
    for name, variant in variants.items():
        y = variant.eval()(x.to(dtype)).double()
        error = (y - exact).abs()
        rows[name] = {
            "mean_abs_error": error.mean().item(),
            "max_abs_error": error.max().item(),
            "changed_predictions": int((y.argmax(1) != exact.argmax(1)).sum()),
        }
    return rows


CONTEXTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "(none)": contextlib.nullcontext,
    "no_grad()": torch.no_grad,
    "inference_mode()": torch.inference_mode,
}


def switches(make_bn: Callable[[], nn.Module], x: Tensor) -> list[dict[str, object]]:
    """Run a fresh ``make_bn()`` on ``x`` in train and eval mode under each of CONTEXTS.

    One row per combination: which ``statistics`` normalized (batch or running, found by
    comparing with both), whether the running statistics moved (``buffers move``), whether
    autograd recorded a ``graph`` (the output has a grad_fn), whether the output is an
    ``inference`` tensor, and its ``version`` counter (None where the tensor has none).
    The input is a leaf that requires grad.
    """
    rows = []
    for mode in ("train", "eval"):
        for context, enter in CONTEXTS.items():
            bn = make_bn()
            with torch.no_grad():  # stored statistics unlike the batch's, so the two differ
                bn.running_mean.fill_(0.5)
                bn.running_var.fill_(2.0)
            bn.train(mode == "train")
            before = bn.running_mean.clone()
            leaf = x.clone().requires_grad_()
            with enter():
                y = bn(leaf)
            with torch.no_grad():
                batch = F.batch_norm(x, None, None, bn.weight, bn.bias, True, eps=bn.eps)
            rows.append(
                {
                    "mode": mode,
                    "context": context,
                    "statistics": "batch" if torch.allclose(y, batch) else "running",
                    "buffers move": not torch.equal(bn.running_mean, before),
                    "graph": y.grad_fn is not None,
                    "inference": torch.is_inference(y),
                    "version": None if torch.is_inference(y) else y._version,
                }
            )
    return rows
