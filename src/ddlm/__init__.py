"""ddlm: discrete diffusion language models (masked, uniform, absorbing-uniform)."""

__version__ = "0.1.0"
