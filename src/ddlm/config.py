"""Run configuration: dataclasses loaded from YAML with ``key.sub=value`` overrides, validated on load."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

#: the ``process`` of the autoregressive baseline on the same trunk (every other process is a diffusion process)
AUTOREGRESSIVE = "ar"


def _process_table(attr: str) -> dict:
    """process name -> a class attribute of each registered diffusion process, plus the AR baseline."""
    from .processes import REGISTRY

    table = {name: getattr(cls, attr) for name, cls in REGISTRY.items()}
    table[AUTOREGRESSIVE] = ("next_token",) if attr == "objectives" else ()
    return table


def __getattr__(attr):  # a derived table, kept for scripts that read it
    if attr == "PROCESS_OBJECTIVES":
        return _process_table("objectives")
    raise AttributeError(attr)


def is_autoregressive(run) -> bool:
    """Whether ``run`` is the autoregressive baseline rather than a diffusion run: the one rule for it.

    ``run`` is a process name, a run config (a ``TrainConfig`` or its saved dict), or anything with a
    ``process`` attribute, such as a model or a loaded run. The baseline's process is "ar" in its
    config, and it has no diffusion process: the ``process`` of an ``ARTransformer``, and the one
    ``ddlm.load`` returns for an autoregressive run, is None.

    Raises:
        TypeError: ``run`` is none of these (e.g. a process object, or None).
    """
    if isinstance(run, str):
        return run == AUTOREGRESSIVE
    if isinstance(run, dict):
        return run.get("process") == AUTOREGRESSIVE
    if not hasattr(run, "process"):
        raise TypeError(f"is_autoregressive takes a process name, a run config, a model or a loaded run "
                        f"(something with a .process), got {type(run).__name__}")
    return run.process is None or run.process == AUTOREGRESSIVE


@dataclass
class ModelConfig:
    preset: str = "tiny"
    backbone: str = "dit"  # a name in ddlm.models.backbones.BACKBONES ("dit", "conv"); diffusion runs only
    # "denoiser" | "loo" | "score" (UDM), "denoiser" | "score" (MDM), "posterior" (AUDM); default per process
    output: str | None = None
    # output "score": "none" (the DiT's output is the log-score) or "noise_level" (MDM: SEDD's absorbing-graph
    # scaling, log s = output - log(e^sigma - 1) - log K; docs/maths.md §10.3)
    score_scaling: str = "none"
    time_conditioning: bool = True
    hidden: int | None = None
    blocks: int | None = None
    heads: int | None = None
    dropout: float = 0.0
    # process "ar": BOS before every block as its start context, so the NLL covers all L tokens and
    # samples drawn from BOS are blocks like the diffusion models' (False: the first token is context only)
    block_start: bool = True


@dataclass
class DataConfig:
    corpus: str = "default"  # "default", a text file, a folder of .txt files, a .jsonl file, or "sudoku"
    num_puzzles: int = 20000  # corpus "sudoku": number of generated solution grids (one block each)
    tokenizer: str = "char"  # "char", "gpt2", or a tokenizers JSON file
    block_size: int = 128
    val_fraction: float = 0.05


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    decay: str = "cosine"  # "cosine" | "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class D3PMConfig:
    """Process "d3pm" (docs/maths.md §9): the transition matrices and the hybrid loss's lambda."""

    kind: str = "uniform"  # "uniform" | "absorbing" | "gaussian" | "band"
    steps: int = 1000  # T
    noise_schedule: str = "d3pm"  # "d3pm" (the kind's D3PM default) | "matched" (alphabar_n = alpha(n/T) of `schedule`)
    hybrid_lambda: float = 0.01  # lambda of objective d3pm_hybrid (L_vb + lambda CE)
    bandwidth: int = 1  # kind "band": moves between tokens at most this far apart


@dataclass
class TrainConfig:
    run_dir: str = "runs/demo"
    process: str = "mdm"
    objective: str | None = None  # default: the process's ELBO
    schedule: str = "linear"
    eps: float = 1e-3  # alpha_1 = eps
    t_min: float = 1e-3  # training times t = t_min + (1 - t_min) u
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    d3pm: D3PMConfig = field(default_factory=D3PMConfig)  # used by process "d3pm" only
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 32  # global: across processes and accumulation steps
    grad_accum: int = 1
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (and checkpoint) after this wall time
    ema: float = 0.999
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 0  # 0: only at the end
    num_samples: int = 2
    sample_nfe: int = 64
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated) or "fsdp" (sharded weights and optimizer state)

    def validate(self) -> TrainConfig:
        def need(cond, key, value, expected):
            if not cond:
                raise ValueError(f"config key {key!r} is {value!r}, expected {expected}")

        for key, value in _float_items(self):  # inf and nan pass the comparisons below (inf > 0): refuse them first
            need(math.isfinite(value), key, value, "a finite number")
        objectives = _process_table("objectives")
        need(self.process in objectives, "process", self.process, f"one of {sorted(objectives)}")
        allowed = objectives[self.process]
        need(self.objective is None or self.objective in allowed, "objective", self.objective,
             f"one of {allowed} for process {self.process!r}")
        outputs = _process_table("network_outputs")[self.process]
        need(self.model.output is None or self.model.output in outputs, "model.output", self.model.output,
             f"one of {outputs} for process {self.process!r}")
        from .models.backbones import BACKBONES

        backbones = ("dit",) if is_autoregressive(self.process) else tuple(sorted(BACKBONES))
        need(self.model.backbone in backbones, "model.backbone", self.model.backbone,
             f"one of {backbones} for process {self.process!r}")
        scalings = _process_table("score_scalings")[self.process] or ("none",)
        need(self.model.score_scaling in scalings, "model.score_scaling", self.model.score_scaling,
             f"one of {scalings} for process {self.process!r}")
        need(self.model.score_scaling == "none" or self.model.output == "score", "model.score_scaling",
             self.model.score_scaling, f"'none' unless model.output is 'score' (it is {self.model.output!r})")
        need(self.schedule in ("linear", "cosine"), "schedule", self.schedule, "'linear' or 'cosine'")
        if self.process == "d3pm":
            self._validate_d3pm(need)
        need(0 <= self.eps < 1, "eps", self.eps, "a number in [0, 1)")
        need(0 <= self.t_min < 1, "t_min", self.t_min, "a number in [0, 1)")
        for key in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "eval_batches",
                    "save_every", "keep_checkpoints", "num_samples", "sample_nfe"):
            need(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        need(self.sample_every >= 0, "sample_every", self.sample_every, "an integer >= 0")
        need(self.batch_size % self.grad_accum == 0, "batch_size", self.batch_size,
             f"a multiple of grad_accum = {self.grad_accum}")
        need(0 <= self.ema < 1, "ema", self.ema, "a number in [0, 1)")
        need(self.max_minutes is None or self.max_minutes > 0, "max_minutes", self.max_minutes, "None or > 0")
        need(self.data.block_size >= 2, "data.block_size", self.data.block_size, "an integer >= 2")
        need(self.data.corpus != "sudoku" or self.data.block_size == 81, "data.block_size", self.data.block_size,
             "81 for corpus 'sudoku'")
        need(self.data.corpus != "sudoku" or self.data.tokenizer == "char", "data.tokenizer", self.data.tokenizer,
             "'char' for corpus 'sudoku'")
        need(self.data.num_puzzles >= 20, "data.num_puzzles", self.data.num_puzzles, "an integer >= 20")
        need(0 < self.data.val_fraction <= 0.5, "data.val_fraction", self.data.val_fraction, "a number in (0, 0.5]")
        need(self.optim.lr > 0, "optim.lr", self.optim.lr, "a positive number")
        need(0 <= self.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", self.optim.min_lr_ratio,
             "a number in [0, 1] (the final learning rate as a fraction of optim.lr)")
        need(self.optim.weight_decay >= 0, "optim.weight_decay", self.optim.weight_decay, "a number >= 0")
        need(0 <= self.optim.beta1 < 1, "optim.beta1", self.optim.beta1, "a number in [0, 1)")
        need(0 <= self.optim.beta2 < 1, "optim.beta2", self.optim.beta2, "a number in [0, 1)")
        need(0 <= self.model.dropout < 1, "model.dropout", self.model.dropout, "a number in [0, 1)")
        need(self.optim.decay in ("cosine", "constant"), "optim.decay", self.optim.decay, "'cosine' or 'constant'")
        need(self.optim.warmup_steps >= 0, "optim.warmup_steps", self.optim.warmup_steps, "an integer >= 0")
        need(self.optim.grad_clip > 0, "optim.grad_clip", self.optim.grad_clip, "a positive number")
        need(self.device in ("auto", "cpu", "cuda"), "device", self.device, "'auto', 'cpu' or 'cuda'")
        need(self.parallel in ("ddp", "fsdp"), "parallel", self.parallel, "'ddp' or 'fsdp'")
        return self

    def _validate_d3pm(self, need) -> None:
        from .processes import D3PM

        d = self.d3pm
        need(d.kind in D3PM.KINDS, "d3pm.kind", d.kind, f"one of {D3PM.KINDS}")
        need(isinstance(d.steps, int) and d.steps >= 1, "d3pm.steps", d.steps, "an integer >= 1")
        need(d.noise_schedule in ("d3pm", "matched"), "d3pm.noise_schedule", d.noise_schedule, "'d3pm' or 'matched'")
        need(d.noise_schedule == "d3pm" or d.kind in ("uniform", "absorbing"), "d3pm.noise_schedule",
             d.noise_schedule, f"'d3pm' for kind {d.kind!r} ('matched' applies to uniform and absorbing)")
        need(d.hybrid_lambda >= 0, "d3pm.hybrid_lambda", d.hybrid_lambda, "a number >= 0")
        need(d.bandwidth >= 1, "d3pm.bandwidth", d.bandwidth, "an integer >= 1")
        # t in [t_min, 1] maps to step ceil(t T): t_min > 0 would never (or too rarely) train the first steps
        need(self.t_min == 0, "t_min", self.t_min, "0 for process 'd3pm' (its steps are n = ceil(t T), t uniform)")

    def process_options(self) -> dict:
        """The process's own options (``ddlm.processes.get_process``): the ``d3pm`` section for D3PM."""
        if self.process != "d3pm":
            return {}
        return dataclasses.asdict(self.d3pm)

    @property
    def resolved_objective(self) -> str:
        return self.objective or _process_table("objectives")[self.process][0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _float_items(cfg, prefix: str = ""):
    """(dotted key, value) of every float value in a config dataclass and its sections."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_items(value, prefix + f.name + ".")
        elif isinstance(value, float):
            yield prefix + f.name, value


def _coerce(key: str, value, tp):
    """Check (and gently convert int -> float) a value against a simple annotation."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"config key {key!r} is None, expected {tp}")
    options = [a for a in args if a is not type(None)] or [tp]
    for opt in options:
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt in (str, bool) and isinstance(value, opt):
            return value
    raise ValueError(f"config key {key!r} is {value!r} ({type(value).__name__}), expected {tp}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build a config dataclass from a nested dict; unknown keys and wrong types raise ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; expected one of {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (for example optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


CONFIG_DIR = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped with ddlm (``ddlm train NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A YAML file path, or the name of a packaged config (e.g. "demo-mdm")."""
    p = Path(path)
    if p.is_file():
        return p
    if p.suffix == "" and (CONFIG_DIR / f"{p.name}.yaml").is_file():
        return CONFIG_DIR / f"{p.name}.yaml"
    raise FileNotFoundError(f"config file {str(path)!r} does not exist (and is not one of the packaged "
                            f"configs {packaged_configs()})")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Load a YAML run config (a path or a packaged name; the defaults when None), apply overrides,
    validate."""
    import yaml

    data = {}
    if path is not None:
        path = resolve_config(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:  # the position only: parser messages quote the file's text
            mark = getattr(e, "problem_mark", None)
            where = f" (syntax error at line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ValueError(f"config file {str(path)!r} is not valid YAML{where}") from None
    data = apply_overrides(data, list(overrides))
    return from_dict(TrainConfig, data).validate()


def saved_config(saved: dict) -> TrainConfig:
    """The TrainConfig of a config saved with a run (``config.json``), validated.

    Keys added since the run was saved take the value that reproduces how the run was made, not
    today's default: an autoregressive run saved without ``model.block_start`` (before 2026-11-24)
    was trained without a block-start token.
    """
    if is_autoregressive(saved) and "block_start" not in (saved.get("model") or {}):
        saved = {**saved, "model": {**(saved.get("model") or {}), "block_start": False}}
    return from_dict(TrainConfig, saved).validate()

