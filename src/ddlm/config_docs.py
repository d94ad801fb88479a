"""The reference of every training config key, generated from the config dataclasses: ``ddlm config
NAME`` (the keys of one config, with their values) and ``ddlm config --markdown`` (docs/configs.md).

The meanings are the ``doc`` metadata of the fields in ``ddlm.config``; the allowed values of the
enumerated keys are ``ddlm.config.allowed_values`` (``process``, ``objective`` and ``model.output``
from the process registry). Nothing here is written twice: a test checks that docs/configs.md is
this module's output.
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing

from .config import (
    AUTOREGRESSIVE,
    CONFIG_DIR,
    TrainConfig,
    allowed_values,
    load_config,
    packaged_configs,
    resolve_config,
)


@dataclasses.dataclass
class KeyInfo:
    """One config key: its dotted name, type, default, meaning and allowed values (None: free)."""

    key: str
    type: str
    default: typing.Any
    doc: str
    allowed: tuple | dict | None


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if args:
        return " | ".join("None" if a is type(None) else a.__name__ for a in args)
    return tp.__name__


def keys(cls=TrainConfig, prefix: str = "") -> list[KeyInfo]:
    """Every leaf key of the config (sections expanded), in the order of the dataclasses."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(keys(tp, prefix + f.name + "."))
            continue
        name = prefix + f.name
        if name in ("objective", "model.output"):  # they depend on the process
            allowed = {p: allowed_values(name, p) for p in allowed_values("process")}
        else:
            allowed = allowed_values(name)
        out.append(KeyInfo(name, _type_name(tp), getattr(defaults, f.name), f.metadata.get("doc", ""), allowed))
    return out


def sections() -> dict[str, str]:
    """Section name ('' for the top level) -> its meaning (the dataclass's docstring)."""
    hints = typing.get_type_hints(TrainConfig)
    out = {"": TrainConfig.__doc__.strip()}
    for f in dataclasses.fields(TrainConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = hints[f.name].__doc__.strip()
    return out


def value_text(value) -> str:
    """A value as it is written in YAML and in ``key=value`` overrides."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _allowed_text(info: KeyInfo, process: str | None = None) -> str:
    if info.allowed is None:
        return ""
    if isinstance(info.allowed, dict):
        if process is not None:
            return "one of " + ", ".join(info.allowed[process]) + f" for process {process}"
        return "; ".join(f"{p}: " + (", ".join(v) if v else "(none)") for p, v in info.allowed.items())
    return "one of " + ", ".join(info.allowed)


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _resolved(cfg: TrainConfig, key: str) -> str | None:
    """What a None of ``objective`` / ``model.output`` means for this config."""
    if key == "objective" and cfg.objective is None:
        return cfg.resolved_objective
    if key == "model.output" and cfg.model.output is None and cfg.process != AUTOREGRESSIVE:
        from .processes import REGISTRY

        return REGISTRY[cfg.process].default_output
    return None


def describe_text(name: str | None = None, overrides=(), width: int = 100) -> str:
    """Every key of a config (a packaged name, a YAML path, or None for the defaults) after
    ``overrides``: its value, type, default, allowed values and meaning, as text for the terminal."""
    cfg = load_config(name, list(overrides))
    source = "the defaults" if name is None else f"{name} ({resolve_config(name)})"
    lines = [f"Training config: {source}" + (f", with {' '.join(overrides)}" if overrides else "") + ".",
             "Set any key with key=value after the config name (ddlm train NAME key=value ...) or in a YAML "
             "file; * marks a value that differs from the default.", ""]
    wrap = textwrap.TextWrapper(width=width, initial_indent="    ", subsequent_indent="    ")
    section = None
    for info in keys():
        head = info.key.split(".")[0] if "." in info.key else ""
        if head != section:
            section = head
            lines.append(f"[{section or 'run'}] {sections()[section]}")
        value = _get(cfg, info.key)
        mark = "*" if value != info.default else " "
        extra = [info.type, f"default {value_text(info.default)}"]
        resolved = _resolved(cfg, info.key)
        if resolved is not None:
            extra.append(f"here {resolved}")
        allowed = _allowed_text(info, cfg.process)
        if allowed:
            extra.append(allowed)
        lines.append(f"{mark} {info.key} = {value_text(value)}   ({'; '.join(extra)})")
        lines.extend(wrap.wrap(info.doc))
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _packaged_rows() -> list[str]:
    rows = []
    flat_defaults = {k.key: k.default for k in keys()}
    for name in packaged_configs():
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        comment = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
        comment = comment.split(" ddlm train ")[0].split(" Launch: ")[0].strip()
        cfg = load_config(name)
        changed = [f"`{k}={value_text(_get(cfg, k))}`" for k in flat_defaults if _get(cfg, k) != flat_defaults[k]]
        rows.append(f"| `{name}` | {_cell(comment)} | {' '.join(changed)} |")
    return rows


def markdown() -> str:
    """docs/configs.md: every key with its type, default, meaning and allowed values, and the packaged
    configs with the keys they set."""
    out = ["# Training config keys", "",
           "Generated by `ddlm config --markdown > docs/configs.md` from the config dataclasses in",
           "`src/ddlm/config.py` (a test checks that this file is up to date). `ddlm config NAME [key=value ...]`",
           "prints the same for one config, with its values. Set a key in a YAML file or on the command line:",
           "`ddlm train demo-mdm optim.lr=3e-4 max_minutes=10`; values are YAML (`null`, `true`, `3e-4`). A",
           "misspelt key is refused with the closest known key (`unknown config key 'optim.lrr'; did you mean",
           "'optim.lr'?`).", ""]
    section = None
    for info in keys():
        head = info.key.split(".")[0] if "." in info.key else ""
        if head != section:
            section = head
            title = "Run" if not section else f"`{section}`"
            out += ["", f"## {title}: {sections()[section]}", "", "| key | type | default | meaning |",
                    "|---|---|---|---|"]
        allowed = _allowed_text(info)
        doc = info.doc + (f". Allowed: {allowed}." if allowed else "")
        out.append(f"| `{info.key}` | {_cell(info.type)} | `{value_text(info.default)}` | {_cell(doc)} |")
    out += ["", "## Packaged configs", "", "`ddlm train NAME` (files in `src/ddlm/configs/`); the keys each sets "
            "differently from the defaults above:", "", "| name | what it is | keys it sets |", "|---|---|---|"]
    out += _packaged_rows()
    return "\n".join(out) + "\n"
