"""BatchNorm1d/2d/3d: drop-ins for ``torch.nn.BatchNorm*``, laid out like PyTorch's own file.

``_NormBase`` holds the state every per-channel norm shares (affine parameters, running
buffers, resets, state_dict versioning); ``_BatchNorm`` decides which statistics
normalize and which buffers update; the subclasses only check the input's dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as F
from . import state


class _NormBase(nn.Module):
    """Common base of _InstanceNorm and _BatchNorm: parameters, buffers and their resets."""

    _version = 2  # version 2 added the num_batches_tracked buffer
    __constants__ = ["track_running_stats", "momentum", "eps", "num_features", "affine"]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        # gamma ("weight") and beta ("bias"): learnable, one per channel, only if affine.
        state.register_affine(self, num_features, affine, bias, device=device, dtype=dtype)
        # Running estimates: buffers (saved in state_dict, moved by .to(), never trained).
        state.register_running_stats(self, num_features, track_running_stats, device, dtype)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean <- 0, running_var <- 1, num_batches_tracked <- 0."""
        if self.track_running_stats:
            state.reset_running(self)

    def reset_parameters(self) -> None:
        """Reset the running statistics, then weight <- 1 and bias <- 0 (not U(0, 1))."""
        self.reset_running_stats()
        if self.affine:
            state.reset_affine(self)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Checkpoints older than version 2 have no num_batches_tracked: keep ours (0 when fresh).
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                nbt = self.num_batches_tracked
                state_dict[key] = (
                    nbt
                    if nbt is not None and nbt.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    """Per-channel statistics over (N, *spatial); subclasses say which input ranks are valid."""

    # The same signature as _NormBase's, restated as torch does: a wrong keyword then raises
    # "_BatchNorm.__init__() got an unexpected keyword argument", word for word torch's error.
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)

        # How much the new batch weighs in the running estimates.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average: the k-th batch weighs 1/k
                factor = 1.0 / float(self.num_batches_tracked)

        # Batch statistics normalize in training, and in eval when there are no buffers.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)

        # Buffers are handed over only where they are used: to be updated (training and
        # tracking) or to normalize (eval). So flipping track_running_stats to False on a
        # built layer stops the updates in training but not their use in eval.
        pass_buffers = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs; statistics over N (and L)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) inputs; statistics over (N, H, W)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(_BatchNorm):
    """Batch normalization of (N, C, D, H, W) inputs; statistics over (N, D, H, W)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
