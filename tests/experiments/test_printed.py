"""normtut.experiments.printed: the reach of rounding, against exact rounding experiments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normtut.experiments.printed import compare_printed, rounding_reach

pytestmark = pytest.mark.usefixtures("one_thread")


def bn(x):
    return F.batch_norm(x, None, None, training=True)


def test_reach_bounds_the_effect_of_rounding_the_input():
    torch.manual_seed(0)
    exact = torch.rand(2, 2, 2, 3, dtype=torch.float64)
    printed_input = exact.round(decimals=4)
    reach = rounding_reach(bn, printed_input)
    assert reach.shape == exact.shape
    # The true output, rounded for print, lies within reach of the recomputed one.
    printed_output = bn(exact).round(decimals=4)
    assert compare_printed(bn(printed_input), printed_output, reach)["explained"]


def test_reach_of_the_identity_is_one_unit():
    x = torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(
        rounding_reach(lambda t: t, x), torch.full((3,), 1e-4, dtype=torch.float64)
    )
    torch.testing.assert_close(
        rounding_reach(lambda t: 2 * t, x, decimals=2), torch.full((3,), 0.015, dtype=torch.float64)
    )


def test_compare_printed_counts_and_flags():
    computed = torch.tensor([0.12344, 0.12346, 1.0])
    printed = torch.tensor([0.1234, 0.1234, 1.0])
    result = compare_printed(computed, printed)
    assert result == {"differ": 1, "total": 3, "max_diff": 6e-5}
    assert not compare_printed(computed, printed, torch.full((3,), 1e-5))["explained"]
