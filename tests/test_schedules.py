import math

import pytest
import torch

from ddlm.schedules import CosineSchedule, LinearSchedule, get_schedule


@pytest.mark.parametrize("schedule", [LinearSchedule(), LinearSchedule(0.0), CosineSchedule(), CosineSchedule(0.01)])
def test_endpoints_monotone_and_derivative(schedule):
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    a = schedule.alpha(t)
    assert a[0].item() == pytest.approx(1.0, abs=1e-15)
    assert a[-1].item() == pytest.approx(schedule.eps, abs=1e-12)
    assert bool((a[1:] < a[:-1]).all())
    # dalpha is the derivative: central differences
    h = 1e-6
    tm = t[1:-1]
    fd = (schedule.alpha(tm + h) - schedule.alpha(tm - h)) / (2 * h)
    assert torch.allclose(schedule.dalpha(tm), fd, atol=1e-7)


def test_linear_formula():
    s = LinearSchedule(eps=1e-3)
    assert s.alpha(torch.tensor(0.25, dtype=torch.float64)).item() == pytest.approx(1 - 0.999 * 0.25, abs=1e-15)
    c = CosineSchedule(eps=0.0)
    assert c.alpha(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(math.cos(math.pi / 4), abs=1e-15)


def test_bad_inputs():
    with pytest.raises(ValueError, match="t must lie in"):
        LinearSchedule().alpha(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="eps"):
        LinearSchedule(eps=1.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        get_schedule("quadratic")


@pytest.mark.parametrize("schedule", [LinearSchedule(), CosineSchedule(0.01)])
def test_inverse(schedule):
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(schedule.t_of_alpha(schedule.alpha(t)), t, atol=1e-7)
