"""Loading the run configuration: YAML (optionally on top of a base file) <- dotted overrides ->
the dataclasses of `sections.py`, validated.

Every user mistake (unknown key, wrong type, invalid value, unsafe YAML) becomes a `ConfigError`
whose message names the key and the file; the CLI prints it and exits with status 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from trainer.config.sections import Config, ConfigError



class _SafeLoaderNoDuplicates(yaml.SafeLoader):
    """SafeLoader (no Python tags) that also rejects duplicate keys, a common silent mistake."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_SafeLoaderNoDuplicates.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping safely; errors name the file (and line when YAML knows it)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is expected)") from None
    try:
        data = yaml.load(text, Loader=_SafeLoaderNoDuplicates)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Return the merged mapping and, for each dotted key, the file that set it."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: base files form a cycle: {' -> '.join(map(str, seen + (path,)))}")
    data = read_yaml(path)
    base = data.pop("base", None)
    merged: dict = {}
    origins: dict[str, str] = {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file path, got {base!r}")
        merged, origins = _load_with_bases((path.parent / base), seen + (path,))
    _deep_merge(merged, data, origins, str(path), prefix="")
    return merged, origins


def _deep_merge(into: dict, new: dict, origins: dict[str, str], source: str, prefix: str) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, origins, source, dotted + ".")
        else:
            into[key] = value
        _record_origins(origins, dotted, value, source)


def _record_origins(origins: dict[str, str], dotted: str, value: Any, source: str) -> None:
    origins[dotted] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _record_origins(origins, f"{dotted}.{key}", sub, source)


# ---------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as a YAML scalar/list)."""
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_SafeLoaderNoDuplicates) if raw != "" else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep it as a plain string (e.g. a path with a colon)
    return key.strip(), value


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Typed construction


def _unknown_key_error(dotted: str, candidates: list[str], origin: str) -> ConfigError:
    prefix, _, leaf = dotted.rpartition(".")
    close = difflib.get_close_matches(leaf, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
    valid = ", ".join(sorted(candidates))
    return ConfigError(f"{origin}: unknown key '{dotted}'{hint} (valid keys here: {valid})")


def _coerce(value: Any, annotation: Any, dotted: str, origin: str) -> Any:
    origin_type = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    where = f"{origin}: '{dotted}'"
    if origin_type in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], dotted, origin)
    if origin_type is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where} must be one of {choices}, got {value!r}")
        return value
    if origin_type is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{dotted}[{i}]", origin) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, dotted, origin)
    raise TypeError(f"unsupported config annotation {annotation!r} for {dotted}")


def _build(cls: type, data: Any, prefix: str, origin: str | dict[str, str]) -> Any:
    origins = origin if isinstance(origin, dict) else {}
    default_origin = origin if isinstance(origin, str) else "config"

    def origin_of(dotted: str) -> str:
        return origins.get(dotted, default_origin)

    if not isinstance(data, dict):
        raise ConfigError(f"{origin_of(prefix)}: '{prefix}' must be a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise _unknown_key_error(dotted, list(fields), origin_of(dotted))
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, dotted, origin)
        else:
            kwargs[key] = _coerce(value, annotation, dotted, origin_of(dotted))
    return cls(**kwargs)


def config_from_dict(data: dict, origin: str | dict[str, str] = "config") -> Config:
    config = _build(Config, data, "", origin)
    validate(config, origin if isinstance(origin, str) else "config")
    return config


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load `path` (with its base chain), apply dotted overrides, type-check and validate."""
    data: dict = {}
    origins: dict[str, str] = {}
    if path is not None:
        data, origins = _load_with_bases(Path(path))
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
        _record_origins(origins, key, value, "command line")
    config = _build(Config, data, "", origins)
    validate(config, str(path) if path else "command line", origins)
    return config


# ---------------------------------------------------------------------------------------------
# Validation of values (types are already right)


def validate(config: Config, source: str, origins: dict[str, str] | None = None) -> None:
    origins = origins or {}

    def fail(dotted: str, message: str) -> None:
        raise ConfigError(f"{origins.get(dotted, source)}: '{dotted}' {message}")

    checks: list[tuple[str, bool, str]] = [
        ("model.stacks", config.model.stacks >= 1, "must be at least 1"),
        ("model.features", config.model.features >= 2 and config.model.features % 2 == 0,
         "must be an even number >= 2"),
        ("model.depth", config.model.depth >= 1, "must be at least 1"),
        ("model.input_size", len(config.model.input_size) == 2
         and all(s > 0 and s % (config.model.heatmap_stride * 2 ** config.model.depth) == 0
                 for s in config.model.input_size),
         f"must be [width, height], each a multiple of heatmap_stride x 2^depth "
         f"= {config.model.heatmap_stride * 2 ** config.model.depth}"),
        ("model.heatmap_stride", config.model.heatmap_stride == 4,
         "must be 4 (the Stacked Hourglass stem downsamples by 4)"),
        ("data.batch_size", config.data.batch_size >= 1, "must be at least 1"),
        ("data.workers", config.data.workers >= 0, "must be >= 0"),
        ("data.streams", config.data.streams >= 1, "must be >= 1"),
        ("data.shuffle_buffer", config.data.shuffle_buffer >= 1, "must be at least 1"),
        ("data.samples_per_epoch", config.data.samples_per_epoch is None
         or config.data.samples_per_epoch >= 1, "must be at least 1 (or null)"),
        ("augment.scale_range", len(config.augment.scale_range) == 2
         and 0 < config.augment.scale_range[0] <= config.augment.scale_range[1],
         "must be [low, high] with 0 < low <= high"),
        ("codec.sigma", config.codec.sigma > 0, "must be positive"),
        ("optim.lr", config.optim.lr > 0, "must be positive"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.grad_clip", config.optim.grad_clip >= 0, "must be >= 0 (0 disables clipping)"),
        ("optim.accumulation_steps", config.optim.accumulation_steps >= 1, "must be at least 1"),
        ("optim.betas", len(config.optim.betas) == 2
         and all(0 <= b < 1 for b in config.optim.betas), "must be two numbers in [0, 1)"),
        ("schedule.epochs", config.schedule.epochs >= 1, "must be at least 1"),
        ("schedule.steps_per_epoch", config.schedule.steps_per_epoch is None
         or config.schedule.steps_per_epoch >= 1, "must be at least 1 (or null)"),
        ("schedule.warmup_steps", config.schedule.warmup_steps >= 0, "must be >= 0"),
        ("schedule.warmup_factor", 0 < config.schedule.warmup_factor <= 1, "must be in (0, 1]"),
        ("schedule.gamma", config.schedule.gamma > 0, "must be positive"),
        ("dist.zero_stage", config.dist.zero_stage in (0, 1, 2, 3), "must be 0, 1, 2 or 3"),
        ("dist.timeout_s", config.dist.timeout_s > 0, "must be positive"),
        ("checkpoint.every_steps", config.checkpoint.every_steps >= 1, "must be at least 1"),
        ("checkpoint.keep_last", config.checkpoint.keep_last >= 1, "must be at least 1"),
        ("eval.every_epochs", config.eval.every_epochs >= 0, "must be >= 0 (0 disables)"),
        ("eval.batch_size", config.eval.batch_size >= 1, "must be at least 1"),
        ("eval.box_score_thr", 0.0 <= config.eval.box_score_thr <= 1.0, "must be in [0, 1]"),
        ("tracking.log_every_steps", config.tracking.log_every_steps >= 1, "must be at least 1"),
        ("tracking.finish_timeout_s", config.tracking.finish_timeout_s >= 0, "must be at least 0"),
        ("log_every_steps", config.log_every_steps >= 1, "must be at least 1"),
    ]
    for dotted, ok, message in checks:
        if not ok:
            fail(dotted, message)
    if config.model.checkpoint_stacks is not None and not 0 <= config.model.checkpoint_stacks <= config.model.stacks:
        fail("model.checkpoint_stacks", f"must be between 0 and model.stacks ({config.model.stacks}), or null (all)")
    if config.model.compile is True and config.dist.zero_stage == 3:
        fail("model.compile", "is not supported with ZeRO-3 (its parameter hooks run inside the traced "
             "forward); use model.compile=false or auto")
    if config.dist.zero_stage and config.dist.backend != "deepspeed":
        fail("dist.zero_stage", "needs dist.backend=deepspeed")


def check_data_paths(config: Config, need_val: bool) -> None:
    """At train/eval time, the shard locations must exist (remote urls are checked when read)."""
    keys = ["data.train_shards"] + (["data.val_shards"] if need_val else [])
    for dotted in keys:
        value = getattr(config.data, dotted.split(".")[1])
        if not value:
            raise ConfigError(f"'{dotted}' is empty: point it at a shard directory from `python -m shards`")
        if _is_local_path(value) and not Path(value).exists():
            raise ConfigError(f"'{dotted}': shard directory {value!r} does not exist")


def _is_local_path(location: str) -> bool:
    return "://" not in location and not location.startswith("pipe:") and not any(c in location for c in "{*?[")


# ---------------------------------------------------------------------------------------------
# Output


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config atomically (a partially written config would break resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(dump_yaml(config))
    os.replace(tmp, path)
