"""SGD with momentum, written as the plain loop behind ``torch.optim.SGD``.

For every parameter theta with gradient g (lr gamma, momentum mu, dampening tau,
weight decay lambda)::

    g   <- -g                   if maximize
    g   <- g + lambda * theta   if lambda != 0
    b_1 <- g                    first step: the buffer starts at the gradient itself
    b_t <- mu * b_{t-1} + (1 - tau) * g
    g   <- g + mu * b_t         if nesterov, else g <- b_t
    theta <- theta - gamma * g

The learning rate sits outside the velocity b; Sutskever et al. put it inside
(v <- mu * v + gamma * g, theta <- theta - v). The two agree while gamma is constant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum: a drop-in for ``torch.optim.SGD``.

    Same arguments (without ``foreach``/``fused``/``differentiable``), same checks, same
    ``state_dict`` (the per-parameter state is ``{"momentum_buffer": b}``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved by older code may lack these
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; return ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = float(group["lr"])  # a 1-element tensor lr acts as its value
            mu, tau = group["momentum"], group["dampening"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:  # skipped: neither p nor its buffer moves
                    continue
                g = -p.grad if group["maximize"] else p.grad  # ascend: use -grad
                if wd != 0:
                    g = g.add(p, alpha=wd)  # g <- g + lambda * theta
                if mu != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:  # b_1 = g_1 (no dampening)
                        buf = state["momentum_buffer"] = g.detach().clone()
                    else:  # b_t = mu * b_{t-1} + (1 - tau) * g_t
                        buf.mul_(mu).add_(g, alpha=1 - tau)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=mu)  # g <- g + mu * b_t
                    else:
                        g = buf  # g <- b_t
                p.add_(g, alpha=-lr)  # theta <- theta - lr * g
        return loss
