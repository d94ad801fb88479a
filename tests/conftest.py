import pytest
import torch

from ddlm import exact

# The toy tensors are tiny: one thread avoids thread-pool overhead (and contention on 2 cores).
torch.set_num_threads(1)

#: (K, L) toy shapes the maths is checked on
TOY_SHAPES = [(2, 3), (3, 3), (4, 3), (3, 2)]
#: alpha values from 1e-4 to 1 - 1e-4
ALPHAS = [1e-4, 0.01, 0.2, 0.5, 0.8, 0.99, 1 - 1e-4]


@pytest.fixture(params=TOY_SHAPES, ids=lambda s: f"K{s[0]}L{s[1]}")
def law(request):
    k, length = request.param
    return exact.random_law(k, length, seed=100 * k + length, concentration=0.7)


def random_noisy(law, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(law.vocab_size, (n, law.length), generator=g)
