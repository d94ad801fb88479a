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


def key(default=dataclasses.MISSING, doc: str = "", *, factory=None, choices=None):
    """A config field with its meaning (``doc``) and, for an enumerated key with fixed values, ``choices``
    (keys whose values come from the process registry are listed in :func:`allowed_values`). The
    meanings are the one source of ``ddlm config`` and docs/configs.md (``ddlm.config_docs``)."""
    metadata = {"doc": doc}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """The network: a DiT for a diffusion process, a causal transformer on the same trunk for "ar"."""

    preset: str = key("tiny", "size preset of the trunk (hidden x blocks x heads: tiny 256x4x4, small 768x12x12, "
                              "medium 1024x24x16); model.hidden, model.blocks and model.heads override its parts")
    backbone: str = key("dit", "the network of a diffusion run, a name in ddlm.models.backbones.BACKBONES: 'dit' "
                               "(transformer) or 'conv' (dilated convolutions); the autoregressive baseline is "
                               "always the transformer")
    output: str | None = key(None, "what the network outputs: 'denoiser' p(x0 | x_t), 'loo' (UDM: the leave-one-out "
                                   "posterior p(x0^i | x_t^-i)), 'posterior' (AUDM) or 'score' (UDM, MDM: the "
                                   "concrete score, SEDD); None: the process's default")
    score_scaling: str = key("none", "output 'score': 'none' (the network's output is the log-score) or "
                                     "'noise_level' (MDM: SEDD's absorbing-graph scaling, log s = output - "
                                     "log(e^sigma - 1) - log K; docs/maths.md §10.3)")
    time_conditioning: bool = key(True, "condition the DiT on the noise level (adaLN); false: a constant "
                                        "conditioning vector, the time is ignored")
    hidden: int | None = key(None, "width of the trunk (None: the preset's)")
    blocks: int | None = key(None, "number of transformer blocks (None: the preset's)")
    heads: int | None = key(None, "attention heads per block, must divide model.hidden (None: the preset's)")
    dropout: float = key(0.0, "dropout probability inside the trunk")
    block_start: bool = key(True, "process 'ar': put BOS before every block as its start context, so the NLL covers "
                                  "all block_size tokens and samples drawn from BOS are blocks like the diffusion "
                                  "models' (false: the first token is context only)")


@dataclass
class DataConfig:
    """The corpus, its tokenizer and how it is cut into blocks."""

    corpus: str = key("default", "'default' (the embedded Shakespeare corpus, 9 plays), a text file, a folder of "
                                 ".txt files (one document each), a .jsonl file (field 'text'), or 'sudoku' "
                                 "(generated solution grids)")
    num_puzzles: int = key(20000, "corpus 'sudoku': number of generated solution grids (one block each)")
    tokenizer: str = key("char", "'char' (one token per character of the corpus), 'gpt2' (GPT-2's BPE, 50,257 "
                                 "tokens, offline), 'bpe:N' (a byte-level BPE of N tokens trained on the training "
                                 "split, deterministic, saved with the run) or a tokenizers JSON file")
    block_size: int = key(128, "tokens per training block: documents are packed as BOS + text + EOS and cut into "
                               "blocks of this length (81 for 'sudoku')")
    val_fraction: float = key(0.05, "share held out for validation: whole documents when there are enough, else the "
                                    "last val_fraction of every document (the default corpus: the last 5% of every "
                                    "play)")


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = key(1e-3, "peak learning rate of AdamW")
    weight_decay: float = key(0.0, "AdamW weight decay")
    beta1: float = key(0.9, "AdamW beta1 (decay of the running mean of the gradients)")
    beta2: float = key(0.98, "AdamW beta2 (decay of the running mean of the squared gradients)")
    warmup_steps: int = key(100, "linear warm-up of the learning rate over this many steps")
    decay: str = key("cosine", "after warm-up: 'cosine' decay to min_lr_ratio x lr at the end of the run (see "
                               "optim.time_decay), or 'constant'", choices=("cosine", "constant"))
    min_lr_ratio: float = key(0.1, "the learning rate at the end of the cosine decay, as a fraction of optim.lr")
    time_decay: bool = key(True, "with max_minutes set, the cosine follows whichever budget runs out first: its "
                                 "progress is the larger of the fraction of max_steps done and the fraction of "
                                 "max_minutes used (recorded with each checkpoint); false: max_steps only, so the "
                                 "learning rate does not depend on the machine's speed")
    grad_clip: float = key(1.0, "clip the global gradient norm to this value")


@dataclass
class D3PMConfig:
    """Process "d3pm" (docs/maths.md §9): the transition matrices and the hybrid loss's lambda."""

    kind: str = key("uniform", "transition matrices Q_t", choices=("uniform", "absorbing", "gaussian", "band"))
    steps: int = key(1000, "number of discrete time steps T")
    noise_schedule: str = key("d3pm", "'d3pm' (the kind's D3PM default) or 'matched' (alphabar_n = alpha(n/T) of "
                                      "the config's schedule; uniform and absorbing only)", choices=("d3pm", "matched"))
    hybrid_lambda: float = key(0.01, "lambda of objective d3pm_hybrid (L_vb + lambda CE)")
    bandwidth: int = key(1, "kind 'band': moves between tokens at most this far apart")


@dataclass
class TrainConfig:
    """A training run: ddlm train NAME key=value ..."""

    run_dir: str = key("runs/demo", "the run folder: config.json, metrics.jsonl, samples.jsonl, checkpoints/; "
                                    "training again with the same run_dir resumes")
    process: str = key("mdm", "the forward process: 'mdm' (masked), 'udm' (uniform), 'audm' (absorbing-uniform), "
                              "'d3pm' (discrete time, general transition matrices), or 'ar' (the autoregressive "
                              "baseline on the same trunk)")
    objective: str | None = key(None, "the training loss (None: the process's ELBO, the one its bound uses)")
    schedule: str = key("linear", "noise schedule alpha(t): 'linear' (alpha = 1 - (1 - eps) t) or 'cosine' "
                                 "(alpha = eps + (1 - eps) cos(pi t / 2))",
                        choices=("linear", "cosine"))
    eps: float = key(1e-3, "alpha at t = 1 (the signal left at the end of the forward process)")
    t_min: float = key(1e-3, "training and validation times are t = t_min + (1 - t_min) u, u uniform in [0, 1)")
    model: ModelConfig = key(doc="the network", factory=ModelConfig)
    data: DataConfig = key(doc="the data", factory=DataConfig)
    d3pm: D3PMConfig = key(doc="process 'd3pm' only: its transition matrices and hybrid loss", factory=D3PMConfig)
    optim: OptimConfig = key(doc="the optimiser", factory=OptimConfig)
    batch_size: int = key(32, "global batch in blocks, across processes and accumulation steps")
    grad_accum: int = key(1, "gradient accumulation steps per optimiser step (batch_size must be a multiple)")
    max_steps: int = key(1000, "optimiser steps of the whole run (the cosine schedule's length)")
    max_minutes: float | None = key(None, "time budget of the whole run in minutes of training, counted across "
                                          "resumptions (stored in the checkpoints); the run stops with a checkpoint "
                                          "when it is spent (None: no limit)")
    ema: float = key(0.999, "decay of the exponential moving average of the weights (with warm-up); the EMA is "
                            "what is validated, sampled and exported")
    seed: int = key(0, "seed of the data order, the times and the corruption (and of the train/validation split)")
    log_every: int = key(10, "write loss, learning rate, gradient norm and tokens/s to metrics.jsonl every N steps")
    eval_every: int = key(200, "estimate the validation bound every N steps (and at the end)")
    eval_batches: int = key(8, "batches of each validation estimate (ddlm eval scores every block)")
    save_every: int = key(200, "write a checkpoint every N steps (and at the end or on Ctrl-C)")
    keep_checkpoints: int = key(2, "number of most recent checkpoints kept")
    sample_every: int = key(0, "write samples to samples.jsonl every N steps (0: only at max_steps)")
    num_samples: int = key(2, "samples drawn each time")
    sample_nfe: int = key(64, "network evaluations per sample (diffusion runs)")
    device: str = key("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", choices=("auto", "cpu", "cuda"))
    parallel: str = key("ddp", "under torchrun: 'ddp' (replicated weights) or 'fsdp' (sharded weights, gradients "
                               "and AdamW state)", choices=("ddp", "fsdp"))
    compile: bool = key(False, "opt-in torch.compile of the training forward pass (for GPUs; the weights and "
                               "checkpoints are unchanged; on CPU it needs a C++ compiler and pays a long "
                               "first step)")

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
        from .data.tokenizers import bpe_spec_size

        bpe_spec_size(self.data.tokenizer)  # "bpe:N": N an integer >= 259
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


def config_keys(cls=None, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass (default ``TrainConfig``), sections before their keys."""
    cls = TrainConfig if cls is None else cls
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(config_keys(hints[f.name], prefix + f.name + "."))
    return out


def did_you_mean(name: str) -> str:
    """'; did you mean 'optim.lr'?' for a misspelt dotted key (closest known key by difflib, or a key of
    another section with the same last part), or '' when nothing is close."""
    import difflib

    known = config_keys()
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if not close:
        leaf = name.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(
            name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def allowed_values(key: str, process: str | None = None) -> tuple[str, ...] | None:
    """The values an enumerated key accepts, or None for a free key. ``process``, ``objective`` and
    ``model.output`` come from the process registry (``Process.objectives``, ``Process.network_outputs``),
    the last two for ``process``; ``model.preset`` from the model presets; the others from the field's
    ``choices``."""
    if key == "process":
        return tuple(sorted(_process_table("objectives")))
    if key == "objective":
        return tuple(_process_table("objectives")[process])
    if key == "model.output":
        return tuple(_process_table("network_outputs")[process])
    if key == "model.preset":
        from .models._layers import PRESETS

        return tuple(PRESETS)
    cls, name = TrainConfig, key
    while "." in name:
        section, name = name.split(".", 1)
        cls = typing.get_type_hints(cls)[section]
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("choices")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build a config dataclass from a nested dict; unknown keys (with the closest known key) and wrong
    types raise ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        name = prefix + str(unknown[0])
        hint = did_you_mean(name) or f"; expected one of {sorted(names)}"
        raise ValueError(f"unknown config key {name!r}{hint} (every key: ddlm config)")
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

