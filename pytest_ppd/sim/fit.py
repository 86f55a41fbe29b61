"""What `ppd calibrate` found: the per-point errors, the cross-validated ones, the warnings and the
assumptions, and how they are printed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from pytest_ppd.sim.costmodel import CostProfile


@dataclass(frozen=True)
class Fit:
    model: str
    gpu: str
    points: list[dict[str, Any]]  # bs, L, m, n, measured_ms, predicted_ms, error
    median_abs_error: float
    max_abs_error: float
    cross_validated: dict[str, dict[str, float]] = field(default_factory=dict)  # axis -> mape, p90, max, n
    at_bounds: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report_lines(self, profile: CostProfile, fitted: Sequence[str]) -> list[str]:
        """The per-point table, in-sample and cross-validated errors, warnings, assumptions, coefficients."""
        lines = [f"{'point':<22} {'measured ms':>12} {'predicted ms':>13} {'error':>8} {'rounds':>7}"]
        for row in self.points:
            point = f"bs{row['bs']}-L{row['L']}-m{row['m']}"
            lines.append(f"{point:<22} {row['measured_ms']:>12.2f} {row['predicted_ms']:>13.2f} "
                         f"{row['error']:>+8.1%} {row['n']:>7}")
        lines.append(f"in-sample ({len(self.points)} points of {self.model} on {self.gpu}, the points it was "
                     f"fitted to): median |error| {self.median_abs_error:.1%}, max {self.max_abs_error:.1%}")
        for axis, e in self.cross_validated.items():
            lines.append(f"cross-validated, one {axis} level left out at a time ({e['n']} predictions of unseen "
                         f"points): MAPE {e['mape']:.1%}, P90 {e['p90']:.1%}, max {e['max']:.1%}")
        lines += [f"warning: {w}: the data cannot place it, or the model lacks the physics it stands in for"
                  for w in self.at_bounds]
        lines += [f"assumed: {a}" for a in self.assumptions]
        lines.append(", ".join(f"{k}={getattr(profile, k):.4g}" for k in fitted))
        return lines
