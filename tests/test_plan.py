import numpy as np
import pytest

from onnxzip.errors import UsageError
from onnxzip.sharing.plan import Budget, allocate, parse_share, shared_counts


def test_parse_and_count_shares():
    assert parse_share("0.5") == 0.5 and parse_share("0.25,1") == (0.25, 1.0)
    assert shared_counts(0.5, [300, 100], ["a", "b"]) == [150, 50]
    with pytest.raises(UsageError, match="outside"):
        shared_counts((0.5, 2.0), [3, 3], ["a", "b"])


def test_allocation_takes_the_cheapest_loss_per_parameter_first():
    costs = [np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 10.0])]
    per_neuron = np.array([10.0, 1.0])  # a neuron of group 0 saves 10 parameters, of group 1 just 1
    counts, spent = allocate(costs, lambda k: per_neuron.copy(), total=100, budget=Budget(target_params=0.75))
    # by cost per parameter: g0 0.1, g1 0.1, g0 0.2, g1 0.2, g0 0.3 -> 32 saved, 68 kept <= 75
    assert counts == [3, 2] and spent == pytest.approx(6.3)
    counts, spent = allocate(costs, lambda k: per_neuron.copy(), total=100, budget=Budget(max_cost=2.5))
    assert counts == [1, 1] and spent == pytest.approx(1.1)  # the next pick (cost 2.0) would pass 2.5


def test_allocation_stops_when_nothing_is_left():
    counts, _ = allocate([np.array([1.0])], lambda k: np.array([5.0]), total=10, budget=Budget(target_params=0.1))
    assert counts == [1]
