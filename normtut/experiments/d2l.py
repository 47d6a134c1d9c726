"""Seed 002's from-scratch batch norm, bugs and all: a specimen for the errata chapter.

This is *not* a layer to use. It re-creates the behaviour of the Dive-into-Deep-Learning
style code in seed 002 (a ``batch_norm`` function and a ``BatchNorm`` module) so that
each of its bugs can be run and compared with ``torch.nn.BatchNorm*``. Every bug is kept
and marked ``# BUG`` with where it comes from: "(post)" if seed 002 added it, "(D2L)" if
the D2L code it follows has it too (chapter 4 cites the files). The corrected
implementation is ``normtut.batchnorm``.

One switch exists, ``BatchNorm(..., fix_beta_typo=True)``: as written, the class cannot
be built at all (``self.beta == ...`` compares instead of assigning, and reading the
missing ``self.beta`` raises AttributeError inside ``__init__``). The switch repairs that
one line and nothing else, so that the remaining bugs can be observed. The default is
the seed's code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional import moments, standardize


def batch_norm(
    is_training: bool,
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float,
    momentum: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Seed 002's ``batch_norm``: returns (Y, new moving_mean, new moving_var).

    ``momentum`` is Keras-style: it weighs the *old* moving value (torch's weighs the
    new batch).
    """
    if not is_training:
        X_hat = standardize(X, moving_mean, moving_var, eps)  # (X - mean) / sqrt(var + eps)
    else:
        assert len(X.shape) in (2, 4)
        # BUG (post): always true (D2L has `== 2`): a 4-D input takes the FC branch.
        if len(X.shape):
            # Over the batch axis only: one statistic per feature, or per (c, h, w).
            mean, var = moments(X, [0])
            mean, var = mean[0], var[0]  # as X.mean(dim=0): shape X.shape[1:]
        else:
            # The convolutional branch, per channel over (N, H, W): never reached.
            mean, var = moments(X, [0, 2, 3])
        X_hat = standardize(X, mean, var, eps)  # (X - mean) / sqrt(var + eps)
        # Keras-style update: new = momentum * old + (1 - momentum) * batch.
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        # BUG (D2L): the biased batch variance feeds the estimate (torch: the unbiased one).
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta  # y = gamma * x_hat + beta
    return Y, moving_mean.data, moving_var.data


class BatchNorm(nn.Module):
    """Seed 002's ``BatchNorm``; ``num_dims`` is 2 (after Linear) or 4 (after Conv2d).

    ``fix_beta_typo=True`` repairs only the ``==`` typo, so that the object can be built.
    """

    def __init__(self, num_features: int, num_dims: int, *, fix_beta_typo: bool = False) -> None:
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        if fix_beta_typo:
            self.beta = nn.Parameter(torch.zeros(shape))
        else:
            # BUG (post): `==` compares instead of assigning; reading the missing
            # self.beta raises AttributeError.
            self.beta == nn.Parameter(torch.zeros(shape))  # noqa: B015
        # BUG (D2L): plain tensor attributes, not registered buffers:
        # absent from state_dict, ignored by .to().
        self.moving_mean = torch.zeros(shape)
        self.moving_var = torch.zeros(shape)  # BUG (D2L until 2021): starts at 0, not 1

    def forward(self, X: Tensor) -> Tensor:
        # Follow the input's device (nothing else ever moves the plain attributes).
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        # BUG (post): moving_var and moving_mean passed in swapped order
        # (the function expects the mean first).
        Y, self.moving_mean, self.moving_var = batch_norm(
            self.training,
            X,
            self.gamma,
            self.beta,
            self.moving_var,
            self.moving_mean,
            eps=1e-5,
            momentum=0.9,
        )
        return Y
