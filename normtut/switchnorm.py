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
    the branches in use (``_branch_moments``, BN's from the batch); this class checks the
    input, tracks BN's statistics, mixes them all and applies the affine.
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
        self.only = None  # every branch is computed and mixed

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

        The logits become 0 there and -inf elsewhere, so softmax gives exact 1s and 0s, and
        ``self.only`` records the branch: the other branches are no longer computed at all, so
        a NaN in one sample stays in that sample (as in InstanceNorm or GroupNorm) and the
        running buffers move only when the branch is "bn". ``reset_parameters()`` undoes it;
        ``load_state_dict`` sets ``only`` from the loaded logits. Freeze the logits
        (requires_grad_(False)) before training such a layer: weight decay on a -inf logit
        gives NaN.
        """
        if branch not in self.branches:
            raise ValueError(f"branch must be one of {self.branches}, got {branch!r}")
        logits = torch.full_like(self.mean_weight, -math.inf)
        logits[self.branches.index(branch)] = 0.0
        self.mean_weight.copy_(logits)
        self.var_weight.copy_(logits)
        self.only = branch
        return self

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        used = self.branches if self.only is None else (self.only,)
        self._check_batch(input, used)
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

        stats = self._branch_moments(x, used)  # {branch: (mean, var)}, BN's from the batch
        if "bn" in used:
            if self.training:
                self._update_running(*stats["bn"], x.numel() // max(C, 1))
            else:  # eval: BN's statistics are the running ones
                stats["bn"] = (
                    self.running_mean.to(dtype).reshape(shape),
                    self.running_var.to(dtype).reshape(shape),
                )

        w_mean, w_var = (w.to(dtype) for w in self.mixture_weights())
        # mu = sum_k softmax(mean_weight)_k mu_k,  s2 = sum_k softmax(var_weight)_k s2_k,
        # over the branches used (one-hot: the one branch, times a weight of exactly 1)
        k = [self.branches.index(b) for b in used]
        mean = sum(w_mean[i] * stats[b][0] for i, b in zip(k, used, strict=True))
        var = sum(w_var[i] * stats[b][1] for i, b in zip(k, used, strict=True))
        y = F.standardize(x, mean, var, self.eps)
        return F.affine(y, self.weight.to(dtype), self.bias.to(dtype), shape).to(input.dtype)

    def _check_batch(self, input: Tensor, used: tuple[str, ...]) -> None:
        """The size checks of the layers the branches stand for (one-hot: its twin's)."""
        if used == ("in",):  # InstanceNorm: more than one value per instance, in both modes
            checks.verify_spatial_size(input.shape)
        elif used == ("ln",):  # GroupNorm(1, C): more than one value per sample, in both modes
            checks.verify_batch_size([input.shape[0] * input.shape[1], 1, *input.shape[2:]])
        elif self.training and "bn" in used:  # BatchNorm: more than one value per channel
            checks.verify_batch_size(input.shape)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.only = self._one_hot_branch()

    def _one_hot_branch(self) -> str | None:
        """The branch both logit vectors put all the weight on (one finite logit), if any."""
        finite = [torch.isfinite(w.detach()) for w in (self.mean_weight, self.var_weight)]
        if int(finite[0].sum()) == 1 and torch.equal(finite[0], finite[1]):
            return self.branches[int(finite[0].nonzero())]
        return None

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

    def _branch_moments(self, x: Tensor, used: tuple[str, ...]) -> dict[str, tuple[Tensor, Tensor]]:
        mean_in, var_in = F.moments(x, (2, 3))  # IN: over (H, W), [N, C, 1, 1]
        stats = {"in": (mean_in, var_in)} if "in" in used else {}
        if "ln" in used:  # LN: over (C, H, W), [N, 1, 1, 1]
            stats["ln"] = pooled_moments(mean_in, var_in, 1)
        if "bn" in used and self.training:  # BN: over (N, H, W), [1, C, 1, 1]
            stats["bn"] = pooled_moments(mean_in, var_in, 0)
        return stats


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

    def _branch_moments(self, x: Tensor, used: tuple[str, ...]) -> dict[str, tuple[Tensor, Tensor]]:
        stats = {}
        if "ln" in used:  # LN: per sample over the C features, [N, 1]
            stats["ln"] = F.moments(x, (1,))
        if "bn" in used and self.training:  # BN: per feature over the N samples, [1, C]
            stats["bn"] = F.moments(x, (0,))
        return stats
