"""How many neurons each hidden layer shares (pure Python/numpy)."""
from __future__ import annotations

from typing import Sequence

from .errors import UsageError


def parse_share(text: str) -> float | tuple[float, ...]:
    """``"0.5"`` -> 0.5; ``"0.5,0.25"`` -> (0.5, 0.25) (one fraction per hidden layer)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--share {text!r}: give a fraction in [0, 1] or a comma-separated list of them") from None
    return values[0] if len(values) == 1 else values


def shared_counts(share: float | Sequence[float], neurons: Sequence[int], names: Sequence[str]) -> list[int]:
    """Neurons to share per group of tied hidden layers (one layer, in a plain chain).

    Args:
        share: one fraction for every group, or one per group (in order).
        neurons: each group's neuron count (the smallest over the tasks).
        names: the groups' names, for messages.
    Returns:
        ``round(share * neurons)`` per group.
    """
    fractions = [float(share)] * len(neurons) if isinstance(share, (int, float)) else [float(s) for s in share]
    if len(fractions) != len(neurons):
        raise UsageError(f"--share lists {len(fractions)} fractions but the model has {len(neurons)} layer groups "
                         f"({'; '.join(names)}); 'onnxzip inspect' lists them")
    for f, name in zip(fractions, names):
        if not 0.0 <= f <= 1.0:
            raise UsageError(f"--share {f} for {name!r} is outside [0, 1]")
    return [int(round(f * n)) for f, n in zip(fractions, neurons)]
