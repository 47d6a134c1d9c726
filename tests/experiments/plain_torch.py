"""The digits training loop written out with torch alone: what ``digits.train`` must equal."""

from __future__ import annotations

import math

import torch
from torch import nn

from normtut.experiments import digits


def reference_training(model, data, epochs, batch_size, lr, seed, opt_class, cosine, drop_last):
    """The loop written out with torch alone."""
    opt = opt_class(model.parameters(), lr=lr)
    n = len(data.y_train)
    steps = (n // batch_size if drop_last else math.ceil(n / batch_size)) * epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with digits.one_thread(), digits.aten_convolutions():
        for _ in range(epochs):
            batches = torch.randperm(n, generator=gen).split(batch_size)
            for batch in batches[:-1] if drop_last and len(batches[-1]) < batch_size else batches:
                loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched:
                    sched.step()
                losses.append(loss.item())
    return losses
