"""Forward processes: masked (MDM), uniform (UDM), absorbing-uniform (AUDM) diffusion and D3PM.

Each process is one class implementing ``Process`` (docs/maths.md §2); ``REGISTRY`` maps the
short names used in configs and checkpoints to the classes.
"""

from .absorbing_uniform import AbsorbingUniformDiffusion
from .base import REGISTRY, Process, State, get_process, register_process
from .d3pm import D3PM
from .d3pm_transitions import TransitionError
from .masked import MaskedDiffusion
from .uniform import UniformDiffusion

#: the state type of every process; the old name of the AUDM state
AUDMState = State
#: name -> class (the registry itself)
PROCESSES = REGISTRY

__all__ = [
    "D3PM", "PROCESSES", "REGISTRY", "AUDMState", "AbsorbingUniformDiffusion", "MaskedDiffusion", "Process", "State",
    "TransitionError", "UniformDiffusion", "get_process", "register_process",
]
