"""Run configuration: a YAML file validated by pydantic models that reject unknown keys.

    cfg = load_config("configs/fsdd_digits_asr.yaml", ["train.max_steps=5", "interface.name=weighted_sum"])
    print(config_to_yaml(cfg))

Schema (every section forbids unknown keys; `downstream` is checked against the task's own options
model here; `interface` and `align` options against the component that takes them when the run is built):

    task: classify                      # asr | classify | multilingual_asr | verify (speechfuse.tasks.list_tasks())
    data: {train: train.csv, dev: dev.csv, test: test.csv, target: label}
    upstreams: [{spec: whisper-tiny.en}, {spec: resemblyzer, options: {}}]
    align: {}                           # speechfuse.Aligner options
    interface: {name: hconv}            # + interface options (output_dim, ...)
    downstream: {}                      # the task's head options (e.g. hidden_dim, dropout), typed per task
    train: {max_steps: 1000, batch_seconds: 60, lr: 1.0e-3, interface_lr: 1.0e-2, seed: 0, ...}
    cache: auto                         # auto | off | <folder>, or the section below
    cache: {dir: auto, key: sample, verify: true, shard_mb: 64, shard_seconds: 30}

Relative data paths (and a relative cache folder) resolve against the config file's folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError

DATA_TARGETS = ("text", "label", "speaker", "language")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    train: str
    """Training manifest (CSV or JSONL; relative to the config file's folder)."""
    dev: str
    """Dev manifest: scored every `train.val_every_steps`; the best checkpoint is chosen on it."""
    test: Optional[str] = None
    """Test manifest, scored once with the best checkpoint when training ends (null: none)."""
    target: Optional[str] = None
    """Manifest field holding the target (text | label | speaker | language); default: the task's own
    (text for asr, label for classify)."""

    languages: Optional[list[str]] = None
    """Keep only the rows of these `language` codes in every split (null: all rows). A string is one code
    or several joined by "+" (`en+de`), so `speechfuse sweep --grid data.languages=en,de,fr` trains one
    monolingual model per language."""

    @field_validator("languages", mode="before")
    @classmethod
    def _language_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [x.strip() for x in v.split("+") if x.strip()]
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one language (or be null for all)")
        return v

    @field_validator("target")
    @classmethod
    def _known_target(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in DATA_TARGETS:
            raise ValueError(f"must be one of {', '.join(DATA_TARGETS)}")
        return v


class UpstreamConfig(_Strict):
    spec: str
    """A bundled name (whisper-tiny.en, resemblyzer, speech-embedding) or hf:<hub id or folder>."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword options of load_upstream, e.g. {trainable: true}."""


class AlignConfig(_Strict):
    frame_rate: Optional[Union[float, str]] = None
    num_layers: Optional[Union[int, str]] = None
    hidden_size: Optional[Union[int, str]] = None
    time_method: Optional[str] = None
    layer_method: Optional[str] = None
    length: Optional[str] = None
    """Unset keys keep speechfuse.Aligner's defaults (max rate / layers / width, interpolate, min length)."""

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class InterfaceConfig(BaseModel):
    """`name` plus that interface's own options (checked by build_interface when the run is built)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "hconv"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SpecAugConfig(_Strict):
    """`train.specaug`: SpecAugment on the fused features while training (speechfuse.augment). Defaults are
    s3prl's ASR downstream config (downstream/asr/config.yaml: num_time_mask 2, time_mask_width_range [0, 40],
    num_freq_mask 4, freq_mask_width_range [0, 50]), but for its time warp (time_warp_window 5), off unless
    `time_warp` is set (the paper configs set it)."""

    time_masks: int = Field(2, ge=0)
    """Time masks per utterance."""
    time_width: float = Field(40, gt=0)
    """Time masks are 0..W-1 frames wide; W below 1 is a fraction of each utterance's valid frames."""
    feature_masks: int = Field(4, ge=0)
    """Feature masks per utterance."""
    feature_width: float = Field(50, gt=0)
    """Feature masks are 0..W-1 channels wide; W below 1 is a fraction of the feature dimension."""
    time_warp: int = Field(0, ge=0)
    """Time-warp window in frames (0: no warp); s3prl's and ESPnet's is 5."""

    @field_validator("time_width", "feature_width")
    @classmethod
    def _frames_or_fraction(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(f"must be a whole number of frames/channels (>= 1) or a fraction below 1, got {v}")
        return int(v) if v >= 1 else v


class TrainConfig(_Strict):
    max_steps: int = Field(1000, gt=0)
    """Optimizer steps to train for."""
    max_epochs: Optional[int] = Field(None, gt=0)
    """Also stop after this many passes over the training set, whichever comes first (null: steps only)."""
    batch_seconds: float = Field(60.0, gt=0)
    """Seconds of (padded) audio in one *global* batch; under DDP each rank gets a share of every batch."""
    lr: float = Field(1e-3, gt=0)
    interface_lr: float = Field(1e-2, gt=0)
    interface_lr_scaling: Literal["none", "fan_in"] = "none"
    """fan_in: each nn.Linear / nn.Conv1d of the interface and aligner (weight and bias) trains at
    interface_lr / sqrt(fan_in), fan_in = the weight's inputs x kernel width (the bound of torch's default
    init), so Adam moves every weight matrix by the same share of its initial scale; other interface
    parameters (weighted_sum's layer logits, ...) keep interface_lr. Off by default (see docs/plateau.md)."""
    upstream_lr: Optional[float] = Field(None, gt=0)
    """For upstreams with options {trainable: true}; default: lr."""
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warmup over this many steps (0: none)."""
    grad_clip: Optional[float] = Field(None, gt=0)
    seed: int = 0
    """Seeds the initial weights and the batch order: the same seed gives the same result on a CPU."""
    val_every_steps: int = Field(100, gt=0)
    """Validate on the dev set, and save the `last` and `best` checkpoints, every this many steps."""
    precision: str = "32-true"
    """Lightning's precision: 32-true, or bf16-mixed / 16-mixed on GPUs."""
    accelerator: str = "auto"
    """Lightning's accelerator: cpu | gpu | auto."""
    devices: Union[int, str] = 1
    """Lightning's devices per node; more than one trains with DDP (under torchrun: the processes it launched)."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes that read and decode audio (0: in the training process)."""
    skip_bad_rows: bool = False
    """Drop bad manifest rows (listed in RUN_DIR/skipped_<split>.csv) instead of failing."""
    progress_bar: bool = True
    """Show the training progress bar and model summary."""
    deterministic: bool = True
    """Ask torch for deterministic algorithms (a warning where an operation has none)."""
    importance: bool = True
    """After training, compute per-(model, layer) drop-one-layer importance on one dev batch."""
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    """A NaN/inf training loss: stop the run with an error naming the step, or skip that batch (no update)."""
    allow_changed_data: bool = False
    """Resume even though a manifest's contents changed since the run started (default: refuse)."""
    specaug: Optional[SpecAugConfig] = None
    """SpecAugment time and feature masks on the fused features in training steps (null: off)."""


class CacheConfig(_Strict):
    """The feature cache (used only when every upstream is frozen). `cache: <word>` is short for `cache: {dir: <word>}`."""

    dir: str = "auto"
    """auto: a cache shared by the runs of one parent folder (RUN_DIR/../cache, or $SPEECHFUSE_HOME/cache
    when that is set); off: always run the upstreams; anything else: that folder."""
    key: Literal["stat", "sample", "content"] = "sample"
    """What tells an audio file is unchanged: stat = path + size + mtime; sample = stat + the first and last
    64 KiB of the file (catches `cp -p` / `rsync -t` rewrites); content = a hash of all its bytes."""
    verify: bool = True
    """Check each cached utterance's CRC32 when it is read, and every shard when extraction starts."""
    shard_mb: float = Field(64.0, gt=0)
    shard_seconds: float = Field(30.0, ge=0)
    """A shard is finalised (kept by a killed `extract`) every shard_mb MiB or shard_seconds, whichever first."""

    @field_validator("dir", mode="before")
    @classmethod
    def _dir_words(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false (and `on` as true)
        if isinstance(v, bool):
            return "auto" if v else "off"
        return v


class Config(_Strict):
    task: str
    """A registered task name (speechfuse.tasks.list_tasks(): asr, classify, multilingual_asr, verify, ...)."""
    data: DataConfig
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    align: AlignConfig = Field(default_factory=AlignConfig)
    interface: InterfaceConfig = Field(default_factory=InterfaceConfig)
    downstream: dict[str, Any] = Field(default_factory=dict)
    """The task's head options, validated by that task's options model (speechfuse.tasks.task_options);
    only the keys given are kept, so defaults stay the task's."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_short_form(cls, v: Any) -> Any:
        return {"dir": v} if isinstance(v, (str, bool)) else v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from .tasks import list_tasks

        if v not in list_tasks():
            raise ValueError(f"unknown task {v!r}; known: {', '.join(list_tasks())}")
        return v

    @field_validator("downstream")
    @classmethod
    def _typed_head_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        task = info.data.get("task")
        if task is None:  # the task itself is invalid and reported as such
            return v
        from .tasks import task_options

        # a ValidationError raised here is reported under downstream.<key>, like any other key
        return task_options(task).model_validate(v).model_dump(exclude_unset=True)

    @field_validator("upstreams", mode="before")
    @classmethod
    def _spec_strings(cls, v: Any) -> Any:
        # allow the short form `upstreams: [whisper-tiny.en, resemblyzer]`
        if isinstance(v, list):
            return [{"spec": u} if isinstance(u, str) else u for u in v]
        return v


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
    "bool_type": "true or false", "bool_parsing": "true or false", "dict_type": "a mapping (key: value)",
    "list_type": "a list", "model_type": "a mapping (key: value)", "model_attributes_type": "a mapping (key: value)",
}


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple, root: type[BaseModel], task: Any = None) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` under `root` (for listing valid keys)."""
    if root is Config and loc[:1] == ("downstream",) and len(loc) == 2:
        from .tasks import TASKS, task_options

        return task_options(task) if isinstance(task, str) and task in TASKS else None
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def error_lines(err: ValidationError, root: type[BaseModel], task: Any = None) -> list[str]:
    """One line per problem in `err` (raised validating `root`), each naming the dotted key."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = _dotted(loc) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            model = _model_at(loc, root, task)
            valid = ", ".join(model.model_fields) if model else "?"
            lines.append(f"unknown key '{key}'; valid keys here: {valid}")
        elif kind == "missing":
            lines.append(f"missing required key '{key}'")
        elif kind in _TYPE_WORDS:
            lines.append(f"key '{key}' must be {_TYPE_WORDS[kind]}, got {e.get('input')!r}")
        else:
            lines.append(f"key '{key}': {e['msg']} (got {e.get('input')!r})")
    return lines


def _explain(err: ValidationError, source: str, task: Any = None) -> ConfigError:
    return ConfigError(f"invalid config {source}:\n  " + "\n  ".join(error_lines(err, Config, task)))


def parse_value(raw: str, where: str) -> Any:
    """A value from the command line, read as YAML (so `[a, b]`, `{k: v}`, `true` work); `1e-3`, which
    YAML 1.1 reads as a string, becomes a float unless quoted."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: value {raw!r} is not valid YAML ({err})") from err
    if isinstance(value, str) and raw.strip()[:1] not in ("'", '"'):
        try:
            value = float(value)
        except ValueError:
            pass
    return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.max_steps=5' -> (['train', 'max_steps'], 5); the value is read by parse_value."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=5")
    key, _, raw = item.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {item!r}: bad key {key!r}; use dotted names like train.lr")
    return parts, parse_value(raw, f"--set {item!r}")


def set_dotted(data: dict, parts: list[str], value: Any, where: str) -> None:
    """`data['a']['b'] = value` for parts `['a', 'b']`, creating missing sections."""
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: '{'.'.join(parts[:i + 1])}' is not a section (it holds {child!r})")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        parts, value = parse_override(item)
        set_dotted(data, parts, value, f"--set {item!r}")
    return data


def _resolve(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (base / p).resolve())


def config_from_dict(data: Any, base_dir: str | Path = ".", source: str = "(dict)") -> Config:
    """Validate a plain dict; relative data paths (the cache folder, a task's file options) resolve against
    `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {source}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise _explain(err, source, data.get("task")) from None
    base = Path(base_dir).resolve()
    for split in ("train", "dev", "test"):
        value = getattr(cfg.data, split)
        if value is not None:
            setattr(cfg.data, split, _resolve(value, base))
    if cfg.cache.dir not in ("auto", "off"):
        cfg.cache.dir = _resolve(cfg.cache.dir, base)
    from .tasks import task_options

    for key in getattr(task_options(cfg.task), "PATH_KEYS", ()):  # file options of a task (verify's trial lists)
        if isinstance(cfg.downstream.get(key), str):
            cfg.downstream[key] = _resolve(cfg.downstream[key], base)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `key.sub=value` overrides, validate. ConfigError names the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of keys, got {type(data).__name__}")
    data.pop("launcher", None)  # where a sweep's jobs run (speechfuse.launcher), not part of any run
    if isinstance(data.get("cache"), (str, bool)):  # so that `--set cache.key=content` finds a section
        data["cache"] = {"dir": data["cache"]}
    data = apply_overrides(data, overrides)
    return config_from_dict(data, path.parent, str(path))


def config_to_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


__all__ = ["Config", "CacheConfig", "DataConfig", "UpstreamConfig", "AlignConfig", "InterfaceConfig", "TrainConfig",
           "load_config", "config_from_dict", "config_to_yaml", "config_to_dict", "parse_override",
           "apply_overrides", "error_lines"]
