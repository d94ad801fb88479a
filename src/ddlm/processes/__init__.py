"""Forward processes: masked (MDM), uniform (UDM) and absorbing-uniform (AUDM) diffusion.

Each process is one class implementing ``Process`` (docs/maths.md §2); ``REGISTRY`` maps the
short names used in configs and checkpoints to the classes.
"""

from .absorbing_uniform import AbsorbingUniformDiffusion
from .base import REGISTRY, Process, State, get_process, register_process
from .masked import MaskedDiffusion
from .uniform import UniformDiffusion

#: the state type of every process; the old name of the AUDM state
AUDMState = State
#: name -> class (the registry itself)
PROCESSES = REGISTRY

__all__ = [
    "PROCESSES", "REGISTRY", "AUDMState", "AbsorbingUniformDiffusion", "MaskedDiffusion", "Process", "State",
    "UniformDiffusion", "get_process", "register_process",
]
