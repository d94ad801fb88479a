"""ReMDM remasking schedules (docs/maths.md §5.2): how much an unmasked token is remasked per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("cap", "constant", "rescale", "loop")
_DEFAULT_ETA = {"cap": 0.008, "constant": 0.008, "rescale": 0.015, "loop": 0.02}


def sigma_max(alpha_t: float, alpha_s: float) -> float:
    """Largest admissible remasking probability: min(1, (1 - alpha_s)/alpha_t)."""
    return 1.0 if alpha_t <= 0 else min(1.0, (1.0 - alpha_s) / alpha_t)


@dataclass(frozen=True)
class RemaskingSchedule:
    """A ReMDM remasking schedule.

    kinds: "cap" (also "constant"): sigma = min(eta, sigma_max); "rescale": sigma = eta sigma_max;
    "loop": the alpha schedule is remapped so that alpha reaches ``alpha_on`` at ``t_on``, stays
    there until ``t_off`` while remasking with sigma = min(eta, sigma_max), and then goes to 1;
    sigma = 0 outside the loop. ``t_switch`` (optional, "switch"): sigma = 0 for t > t_switch.
    ``eta`` defaults to the published values: cap 0.008, rescale 0.015, loop 0.02.
    """

    kind: str = "cap"
    eta: float | None = None
    t_on: float = 0.55
    t_off: float = 0.05
    alpha_on: float = 0.9
    t_switch: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.eta is None:
            object.__setattr__(self, "eta", _DEFAULT_ETA[self.kind])
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta!r}")
        if self.kind == "loop" and not (0.0 < self.t_off < self.t_on < 1.0):
            raise ValueError(f"loop needs 0 < t_off < t_on < 1, got t_off={self.t_off}, t_on={self.t_on}")
        if self.kind == "loop" and not (0.0 < self.alpha_on < 1.0):
            raise ValueError(f"alpha_on must lie in (0, 1), got {self.alpha_on!r}")
        if self.t_switch is not None and not (0.0 <= self.t_switch <= 1.0):
            raise ValueError(f"t_switch must lie in [0, 1], got {self.t_switch!r}")

    def alpha(self, t: torch.Tensor, schedule) -> torch.Tensor:
        """alpha on the sampling grid (remapped for "loop", the process schedule otherwise)."""
        if self.kind != "loop":
            return schedule.alpha(t)
        a1 = schedule.alpha(torch.ones((), dtype=t.dtype))
        hi = (t - self.t_on) / (1.0 - self.t_on)  # t in (t_on, 1]: alpha from alpha_1 to alpha_on
        lo = t / self.t_off  # t in [0, t_off]: alpha from alpha_on to 1
        a_hi = self.alpha_on - (self.alpha_on - a1) * (1.0 - schedule.alpha(hi.clamp(0, 1))) / (1.0 - a1)
        a_lo = 1.0 - (1.0 - self.alpha_on) * (1.0 - schedule.alpha(lo.clamp(0, 1))) / (1.0 - a1)
        return torch.where(t > self.t_on, a_hi, torch.where(t > self.t_off, torch.full_like(t, self.alpha_on), a_lo))

    def sigma(self, t: float, alpha_t: float, alpha_s: float) -> float:
        """Remasking probability for the step t -> s."""
        if self.t_switch is not None and t > self.t_switch:
            return 0.0
        smax = sigma_max(alpha_t, alpha_s)
        if self.kind == "rescale":
            return self.eta * smax
        if self.kind == "loop":
            in_loop = self.t_off < t <= self.t_on and alpha_s == alpha_t
            return min(self.eta, smax) if in_loop else 0.0
        return min(self.eta, smax)
