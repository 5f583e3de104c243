"""How a candidate is scored: compression ratios and the penalized objective."""

from __future__ import annotations

import math

# Drops are differences of accuracies (counts over a split's size), so a drop of exactly δ in
# images, 4 of 4,000 at δ = 0.001, comes out as 0.0010000000000000009: within this much of δ is
# within δ. Far below one image of any split (1e-6 at a million images).
DROP_TOLERANCE = 1e-9


def compression_ratio(total: int, nonzero: int) -> float:
    """All parameters / non-zero parameters (DESIGN §5); an all-zero model counts as one weight."""
    return total / max(nonzero, 1)


def objective(nonzero: int, total: int, accuracy_drop: float, max_drop: float) -> float:
    """Value the optimizers minimize.

    Feasible candidates score log10(kept fraction), which lies in [-inf, 0]. Infeasible ones score
    above every feasible one (1 + 100 × violation) so the constraint is never traded for size, yet
    the violation stays graded and the optimizer can walk back toward feasibility.
    """
    kept = math.log10(max(nonzero, 1) / total)
    violation = accuracy_drop - max_drop
    if violation <= DROP_TOLERANCE:
        return kept
    return 1.0 + 100.0 * violation


def is_feasible(accuracy_drop: float, max_drop: float) -> bool:
    return accuracy_drop <= max_drop + DROP_TOLERANCE
