"""SwitchableNorm2d: Switchable Normalization (Luo et al., ICLR 2019) in PyTorch's conventions.

One layer computes three sets of statistics of an (N, C, H, W) input, those of
InstanceNorm (over H, W), LayerNorm (over C, H, W) and BatchNorm (over N, H, W), and
normalizes with their mixture: softmax(mean_weight) mixes the means, softmax(var_weight)
the variances. The mixture logits are learned with the rest of the network.

Where the official code (switchablenorms/Switchable-Normalization) differs from PyTorch's
own layers, this one follows PyTorch, so that a one-hot mixture is exactly
InstanceNorm2d(affine=True), GroupNorm(1, C) or BatchNorm2d: biased variances normalize,
``momentum`` weights the new batch, ``running_var`` is unbiased and starts at 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import checks, state
from . import functional as F


def pooled_moments(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of the union of equal-size groups, from the groups' own moments.

    Law of total variance: Var = mean of the group variances + variance of the group means.
    The identity is exact, and both terms are two-pass (the variance of the means comes from
    ``moments``), so it stays accurate in floating point, unlike the one-pass
    E[x^2] - E[x]^2 of the official code.
    """
    mean_of_means, var_of_means = F.moments(mean, (dim,))  # E[mu_g], Var[mu_g]
    return mean_of_means, var.mean(dim, keepdim=True) + var_of_means  # E[s2_g] + Var[mu_g]


class _SwitchableNorm(nn.Module):
    """State and mixing shared by SwitchableNorm2d and SwitchableNorm1d.

    A subclass names its ``BRANCHES`` (BN last) and says how to compute the statistics of
    the batch-independent branches (``_sample_moments``) and of the BN branch
    (``_batch_moments``); this class mixes them, tracks BN's, and applies the affine.
    """

    BRANCHES: tuple[str, ...] = ()

    __constants__ = [
        "num_features",
        "eps",
        "momentum",
        "using_moving_average",
        "using_bn",
        "last_gamma",
    ]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        using_moving_average: bool = True,
        using_bn: bool = True,
        last_gamma: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.using_moving_average = using_moving_average
        self.using_bn = using_bn
        self.last_gamma = last_gamma
        state.register_affine(self, num_features, True, True, **factory)
        n_branches = len(self.branches)
        # The mixture logits, one per branch, in the order of self.branches.
        self.mean_weight = nn.Parameter(torch.empty(n_branches, **factory))
        self.var_weight = nn.Parameter(torch.empty(n_branches, **factory))
        # Running statistics are kept for the BN branch only.
        state.register_running_stats(self, num_features, using_bn, device, dtype)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean <- 0, running_var <- 1, num_batches_tracked <- 0."""
        if self.using_bn:
            state.reset_running(self)

    def reset_parameters(self) -> None:
        """Reset the running stats; weight <- 1 (0 with last_gamma), bias <- 0, equal logits.

        Equal logits give each of the k branches 1/k after the softmax.
        """
        self.reset_running_stats()
        state.reset_affine(self, gamma=0.0 if self.last_gamma else 1.0)
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    @property
    def branches(self) -> tuple[str, ...]:
        """Names of the mixed statistics, in the order of the logits."""
        return self.BRANCHES if self.using_bn else self.BRANCHES[:-1]

    def mixture_weights(self) -> tuple[Tensor, Tensor]:
        """softmax(mean_weight), softmax(var_weight): how much each branch counts."""
        return torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)

    @torch.no_grad()
    def use_only_(self, branch: str) -> _SwitchableNorm:
        """Make both mixtures exactly one-hot on ``branch``, one of ``branches``.

        The logits become 0 there and -inf elsewhere, so softmax gives exact 1s and 0s. Freeze
        the logits (requires_grad_(False)) before training such a layer: weight decay on a
        -inf logit gives NaN.
        """
        if branch not in self.branches:
            raise ValueError(f"branch must be one of {self.branches}, got {branch!r}")
        logits = torch.full_like(self.mean_weight, -math.inf)
        logits[self.branches.index(branch)] = 0.0
        self.mean_weight.copy_(logits)
        self.var_weight.copy_(logits)
        return self

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if self.training and self.using_bn:
            # The BN branch needs more than one value per channel.
            checks.verify_batch_size(input.shape)
        checks.check_eps("switchable_norm", self.eps, self.training)
        C = input.shape[1]
        if C != self.num_features:
            raise RuntimeError(
                f"expected input with {self.num_features} channels (dim 1), "
                f"got input of shape {list(input.shape)}"
            )
        params = (self.weight, self.bias, self.running_mean, self.running_var)
        dtype = checks.compute_dtype("switchable_norm", input, *params)
        x = input.to(dtype)
        shape = (1, C) + (1,) * (x.dim() - 2)  # per channel

        means, variances = self._sample_moments(x)  # IN (2d only) and LN: each sample's own
        if self.using_bn:
            if self.training:
                mean_bn, var_bn = self._batch_moments(x, means, variances)  # BN: over (N, *spatial)
                self._update_running(mean_bn, var_bn, x.numel() // max(C, 1))
            else:
                mean_bn = self.running_mean.to(dtype).reshape(shape)
                var_bn = self.running_var.to(dtype).reshape(shape)
            means.append(mean_bn)
            variances.append(var_bn)

        w_mean, w_var = (w.to(dtype) for w in self.mixture_weights())
        # mu = sum_k softmax(mean_weight)_k mu_k,  s2 = sum_k softmax(var_weight)_k s2_k
        mean = sum(w * m for w, m in zip(w_mean, means, strict=True))
        var = sum(w * v for w, v in zip(w_var, variances, strict=True))
        y = F.standardize(x, mean, var, self.eps)
        return F.affine(y, self.weight.to(dtype), self.bias.to(dtype), shape).to(input.dtype)

    def _update_running(self, mean_bn: Tensor, var_bn: Tensor, n: int) -> None:
        """BatchNorm's update: moving average (``momentum``) or cumulative average (factor 1/k)."""
        self.num_batches_tracked.add_(1)  # counted even when empty, as BatchNorm does
        if n == 0:  # an empty batch leaves the running statistics as they are
            return
        factor = (
            self.momentum if self.using_moving_average else 1.0 / float(self.num_batches_tracked)
        )
        F.update_running(self.running_mean, mean_bn, factor)
        F.update_running(self.running_var, F.unbiased(var_bn, n), factor)  # running var is unbiased

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"using_moving_average={self.using_moving_average}, using_bn={self.using_bn}, "
            f"last_gamma={self.last_gamma}"
        )


class SwitchableNorm2d(_SwitchableNorm):
    """Switchable Normalization of (N, C, H, W) inputs: a learned mix of IN, LN and BN statistics.

    ``weight``/``bias`` are per channel ([C], as in BatchNorm2d); ``mean_weight``/``var_weight``
    are the mixture logits in the order IN, LN, BN (IN, LN with ``using_bn=False``). The BN
    statistics are tracked in ``running_mean``/``running_var`` and replace the batch ones in
    eval; IN and LN always use the input's own statistics. ``using_moving_average=False``
    tracks the cumulative average of all batches, like BatchNorm2d(momentum=None).
    ``last_gamma=True`` starts ``weight`` at 0 (for the last norm of a residual branch).
    """

    BRANCHES = ("in", "ln", "bn")

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")

    def _sample_moments(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        mean_in, var_in = F.moments(x, (2, 3))  # IN: over (H, W), [N, C, 1, 1]
        mean_ln, var_ln = pooled_moments(mean_in, var_in, 1)  # LN: over (C, H, W), [N, 1, 1, 1]
        return [mean_in, mean_ln], [var_in, var_ln]

    def _batch_moments(
        self, x: Tensor, means: list[Tensor], variances: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        return pooled_moments(means[0], variances[0], 0)  # BN from IN: over (N, H, W), [1, C, 1, 1]


class SwitchableNorm1d(_SwitchableNorm):
    """Switchable Normalization of (N, C) features: a learned mixture of LN and BN statistics.

    A feature vector has no spatial axes, so the IN statistics of one (sample, feature)
    would be the value itself (mean x, variance 0): IN is left out, as in the official
    code's ``SwitchNorm1d``. The logits are in the order LN, BN; everything else is
    SwitchableNorm2d's.
    """

    BRANCHES = ("ln", "bn")

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2:
            raise ValueError(f"expected 2D input (got {input.dim()}D input)")

    def _sample_moments(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        mean_ln, var_ln = F.moments(x, (1,))  # LN: per sample over the C features, [N, 1]
        return [mean_ln], [var_ln]

    def _batch_moments(
        self, x: Tensor, means: list[Tensor], variances: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        return F.moments(x, (0,))  # BN: per feature over the N samples, [1, C]
