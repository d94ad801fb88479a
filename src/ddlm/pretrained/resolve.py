"""From a checkpoint's contents to its family and settings: which family wrote it (from its config),
the process and K, the prediction, the conditioning, the dimensions, and every convention stated
as metadata (``Spec.conventions``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .families import FAMILIES, Family
from .formats import PretrainedFormatError, Source, nested

_REV_UDM_ALGOS = {"udlm": "rev_udm_udlm", "max_coupling": "rev_udm_udlm", "audm": "rev_udm_audm",
                  "reaudm": "rev_udm_audm", "mdlm": "rev_udm_mdlm", "remdlm": "rev_udm_mdlm"}


@dataclass
class Spec:
    """Everything the loader needs besides the weights."""

    family: Family
    process: str
    vocab_size: int
    rows: int
    output_rows: int
    prediction: str
    eps: float
    t_min: float
    time_conditioning: bool
    hidden: int
    blocks: int
    heads: int
    mlp_ratio: int
    cond_dim: int
    freq_dim: int
    length: int
    noise_fusion: str | None = None
    scale_by_sigma: bool = False
    score_scaling: str = "none"  # ddlm's own exports: DiffusionModel's score_scaling
    mask_id: int | None = None
    schedule: dict = field(default_factory=lambda: {"name": "linear", "eps": 1e-3})
    tokenizer_name: str | None = None
    special_rows: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def detect_family(src: Source) -> Family:
    """The family that wrote ``src``, from its config (and, for the paper's models, its key prefix).

    Raises:
        PretrainedFormatError: a config ddlm does not recognise (what was found is named).
    """
    cfg = src.config
    if src.format == "hf":
        model_type = cfg.get("model_type")
        if model_type == "ddlm_dit":
            return FAMILIES["ddlm"]
        if model_type in ("mdlm", "udlm", "duo"):
            return FAMILIES[model_type]
        if all(k in cfg for k in ("graph", "model", "tokens")):
            return _sedd(cfg, src)
        raise PretrainedFormatError(f"{src.path}/config.json: model_type {model_type!r} is not a family ddlm imports "
                                    f"(known: mdlm, udlm, duo, ddlm_dit, and SEDD's graph/model/tokens config)")
    if src.format == "sedd":
        return _sedd(cfg, src)
    algo = nested(cfg, "algo", "name")
    if src.prefix.endswith("diffusion.model.backbone.") or "diffusion_model" in src.hparams:
        if algo not in _REV_UDM_ALGOS:
            raise PretrainedFormatError(f"{src.path}: a rev_udm checkpoint with algo.name {algo!r}; ddlm imports "
                                        f"{sorted(_REV_UDM_ALGOS)}")
        return FAMILIES[_REV_UDM_ALGOS[algo]]
    if algo in ("duo", "duo_base"):
        return FAMILIES["duo"]
    if cfg.get("parameterization") == "sedd":  # MDLM's (and BD3-LM's) SEDD baseline: MDLM's code and layout
        if cfg.get("diffusion") != "absorbing_state":
            raise PretrainedFormatError(f"{src.path}: parameterization sedd with diffusion {cfg.get('diffusion')!r}; "
                                        "MDLM's code trains SEDD on the absorbing state only")
        return FAMILIES["sedd_absorb"]
    if cfg.get("parameterization") == "subs":
        return FAMILIES["mdlm"]
    if cfg.get("diffusion") == "uniform":
        return FAMILIES["udlm"]
    raise PretrainedFormatError(
        f"{src.path}: cannot tell the family from its config (algo.name {algo!r}, parameterization "
        f"{cfg.get('parameterization')!r}, diffusion {cfg.get('diffusion')!r}); ddlm imports MDLM (subs), MDLM's "
        "SEDD baseline (sedd), UDLM (diffusion uniform), DUO (algo duo) and the paper's rev_udm checkpoints")


def _sedd(cfg: dict, src: Source) -> Family:
    graph = nested(cfg, "graph", "type")
    if graph not in ("absorb", "uniform"):
        raise PretrainedFormatError(f"{src.path}: SEDD graph.type {graph!r}; ddlm imports 'absorb' and 'uniform'")
    return FAMILIES["sedd_" + graph]


def _shape(src: Source, key: str) -> tuple:
    if key not in src.raw:
        raise PretrainedFormatError(f"{src.path}: missing key {src.prefix + key!r} (the backbone's {key})")
    return tuple(src.raw[key].shape)


def _int(value, name: str, where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PretrainedFormatError(f"{where}: config {name} is {value!r}, expected a positive int")
    return value


def _has_mask_token(src: Source, tokenizer_name: str | None) -> bool:
    content = (src.tokenizer_json or {}).get("content") or {}
    added = [t.get("content") for t in content.get("added_tokens", []) if isinstance(t, dict)]
    vocab = (content.get("model") or {}).get("vocab")
    in_vocab = isinstance(vocab, dict) and "[MASK]" in vocab
    return "[MASK]" in added or in_vocab or "mask_token" in src.special_tokens or "bert" in str(tokenizer_name or "")


def resolve(src: Source) -> Spec:
    """The :class:`Spec` of a checkpoint (family, process, K, dimensions, conventions)."""
    family = detect_family(src)
    if family.name == "ddlm":
        return _resolve_ddlm(src, family)
    cfg, where = src.config, src.path
    rows, hidden = _shape(src, "vocab_embed.embedding")
    cond_dim = _shape(src, "sigma_map.mlp.0.weight")[0]
    blocks = len({k.split(".")[1] for k in src.raw if k.startswith("blocks.")})
    mlp_ratio, freq_dim = 4, 256  # fixed in every family's DiT code
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    if src.format == "hf" and not family.name.startswith("sedd"):
        model = {"hidden_size": cfg.get("hidden_dim"), "cond_dim": cfg.get("cond_dim"), "n_blocks": cfg.get("n_blocks"),
                 "n_heads": cfg.get("n_heads"), "length": cfg.get("model_length")}
        rows = _int(cfg.get("vocab_size"), "vocab_size", where)
    heads = _int(model.get("n_heads"), "model.n_heads", where)
    length = _int(model.get("length"), "model.length", where)
    # dimensions stated by the config win over the shapes, so that a file that disagrees with its
    # config fails the shape check with the key, the shape found and the shape expected
    hidden = _int(model["hidden_size"], "model.hidden_size", where) if model.get("hidden_size") else hidden
    cond_dim = _int(model["cond_dim"], "model.cond_dim", where) if model.get("cond_dim") else cond_dim
    blocks = _int(model["n_blocks"], "model.n_blocks", where) if model.get("n_blocks") else blocks
    tokenizer_name = nested(cfg, "data", "tokenizer_name_or_path")
    if family.name.startswith("sedd"):
        tokenizer_name = tokenizer_name or "gpt2"
        if src.format != "lightning":  # SEDD's own config states its tokens; MDLM's SEDD baseline: the shapes
            rows = _int(cfg.get("tokens"), "tokens", where) + family.extra_rows
    has_mask = _has_mask_token(src, tokenizer_name)
    extra = 0 if has_mask and family.name.startswith("rev_udm") else family.extra_rows
    if family.process == "mdm" and has_mask and not family.name.startswith("sedd"):
        raise PretrainedFormatError(
            f"{where}: this {family.name} checkpoint uses its tokenizer's [MASK] token ({tokenizer_name}) as the mask, "
            "not the last row; ddlm's masked process needs the mask id to be K (the last row), which this release "
            "does not follow (not supported yet)")
    k = rows - extra
    # every family's output layer has as many rows as its input embedding
    spec = Spec(family=family, process=family.process, vocab_size=k, rows=rows, output_rows=rows,
                prediction=family.default_prediction, eps=1e-3, t_min=1e-3, time_conditioning=True, hidden=hidden,
                blocks=blocks, heads=heads, mlp_ratio=mlp_ratio, cond_dim=cond_dim, freq_dim=freq_dim, length=length,
                tokenizer_name=tokenizer_name)
    _family_settings(spec, src)
    return spec


def _family_settings(spec: Spec, src: Source) -> None:
    """Fill the per-family conditioning, prediction, eps and special rows from the config."""
    cfg, name, rows = src.config, spec.family.name, spec.rows
    if spec.process == "mdm":
        spec.mask_id = rows - 1
    if name in ("mdlm", "udlm"):
        flag = cfg.get("time_conditioning")
        spec.time_conditioning = (name == "udlm") if flag is None else bool(flag)
        spec.t_min = float(nested(cfg, "training", "sampling_eps", default=1e-3))
    elif name == "duo" or name.startswith("rev_udm"):
        spec.time_conditioning = bool(nested(cfg, "algo", "time_conditioning", default=True))
        eps_key = ("noise", "eps") if name == "duo" else ("training", "sampling_eps")
        spec.eps = float(nested(cfg, *eps_key, default=1e-3))
        spec.t_min = float(nested(cfg, "training", "sampling_eps", default=1e-3))
    elif name.startswith("sedd") and src.format == "lightning":  # MDLM's _sedd_parameterization always scales
        spec.scale_by_sigma = True
        spec.time_conditioning = bool(cfg.get("time_conditioning", True))
        spec.t_min = float(nested(cfg, "training", "sampling_eps", default=1e-3))
    elif name.startswith("sedd"):
        spec.scale_by_sigma = bool(nested(cfg, "model", "scale_by_sigma", default=False))
        if name == "sedd_uniform" and spec.scale_by_sigma:
            raise PretrainedFormatError(f"{src.path}: SEDD uniform with model.scale_by_sigma=true (SEDD itself "
                                        "asserts the absorbing graph for it)")
    spec.schedule = {"name": "linear", "eps": spec.eps}
    if name == "rev_udm_udlm":
        pred = src.hparams.get("model_prediction") or nested(cfg, "algo", "model_prediction", default="mean_loo")
        if pred not in ("mean_loo", "mean"):
            raise PretrainedFormatError(f"{src.path}: model_prediction {pred!r}; expected 'mean_loo' or 'mean'")
        spec.prediction = "loo" if pred == "mean_loo" else "denoiser"
    if name == "rev_udm_audm":
        spec.noise_fusion = nested(cfg, "algo", "conditioning_fusion", default="separate_linear")
    special = {}
    if spec.mask_id is not None:
        special[spec.mask_id] = "MASK (the absorbing state; the id of the [PAD] token the data loaders add)"
    if name.startswith("rev_udm") and spec.process != "mdm" and rows > spec.vocab_size:
        special[rows - 1] = ("MASK/[PAD] row of the network, not a state of the process (noise is drawn from "
                             f"[0, {spec.vocab_size})); ddlm's view drops it")
        spec.notes.append(f"rev_udm's own to_denoiser_logits uses K = {rows} (the row count) in log1p(K a/(1-a)); "
                          f"ddlm converts with the process's K = {spec.vocab_size}")
    if name == "duo" and spec.tokenizer_name == "gpt2":
        special[rows - 1] = "[PAD] (added by the tokenizer): an ordinary uniform state"
    spec.special_rows = special


def _resolve_ddlm(src: Source, family: Family) -> Spec:
    cfg, where = src.config, src.path
    meta = cfg.get("ddlm")
    if not isinstance(meta, dict):
        raise PretrainedFormatError(f"{where}/config.json: model_type ddlm_dit without its 'ddlm' section")
    schedule = meta.get("schedule") or {}
    rows = _int(cfg.get("vocab_size"), "vocab_size", where)
    spec = Spec(family=family, process=str(meta.get("process")), vocab_size=_int(meta.get("process_vocab_size"),
                "ddlm.process_vocab_size", where), rows=rows, output_rows=_int(cfg.get("output_size"), "output_size",
                where), prediction=str(meta.get("prediction")), eps=float(schedule.get("eps", 1e-3)),
                t_min=float(meta.get("t_min", 1e-3)), time_conditioning=bool(cfg.get("time_conditioning", True)),
                hidden=_int(cfg.get("hidden_dim"), "hidden_dim", where),
                blocks=_int(cfg.get("n_blocks"), "n_blocks", where), heads=_int(cfg.get("n_heads"), "n_heads", where),
                mlp_ratio=_int(cfg.get("mlp_ratio"), "mlp_ratio", where),
                cond_dim=_int(cfg.get("cond_dim"), "cond_dim", where), freq_dim=_int(cfg.get("freq_dim", 256),
                "freq_dim", where), length=_int(cfg.get("model_length"), "model_length", where),
                noise_fusion=meta.get("noise_fusion"), schedule=dict(schedule),
                tokenizer_name=meta.get("tokenizer"), score_scaling=str(meta.get("score_scaling", "none")))
    spec.special_rows = {int(k): v for k, v in (meta.get("special_rows") or {}).items()}
    return spec
