"""Run configuration: a YAML file validated by pydantic models that reject unknown keys.

    cfg = load_config("configs/fsdd_digits_asr.yaml", ["train.max_steps=5", "interface.name=weighted_sum"])
    print(config_to_yaml(cfg))

Schema (every section forbids unknown keys; every component's options are checked here against that
component's `Options` model: the upstream's, the Aligner's, the interface's and the task head's, so a typo
is refused when the config loads, naming its dotted key):

    plugins: [my_package.components]    # modules to import first: a plug-in's own components (optional)
    task: classify                      # asr | classify | multilingual_asr | verify (speechfuse.tasks.list_tasks())
    data: {train: train.csv, dev: dev.csv, test: test.csv, target: label}
    upstreams: [{spec: whisper-tiny.en}, {spec: resemblyzer, options: {}}]   # options: the upstream's Options
    align: {}                           # speechfuse.Aligner options (AlignerOptions)
    interface: {name: hconv}            # + that interface's Options (output_dim, ...)
    downstream: {}                      # the task's head options (e.g. hidden_dim, dropout), typed per task
    train: {max_steps: 1000, batch_seconds: 60, lr: 5.0e-3, interface_lr: 1.0e-2, interface_lr_scaling: fan_in,
            grad_clip: 1.0, seed: 0, ...}
    cache: auto                         # auto | off | <folder>, or the section below
    cache: {dir: auto, key: sample, verify: true, shard_mb: 64, shard_seconds: 30}

Relative data paths (and a relative cache folder) resolve against the config file's folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.plugins import load_plugins

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


def _given_options(options: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """`values` checked by a component's Options model, keeping only the keys given (so defaults stay the
    component's); a ValidationError raised here is reported under the section's dotted keys."""
    return options.model_validate(values).model_dump(exclude_unset=True)


def _component(lookup: Any, name: Any) -> Any:
    """A registry lookup whose error (unknown name: the known ones and the plug-in hint) pydantic reports
    under the key that names it."""
    try:
        return lookup(name)
    except SpeechfuseError as err:
        raise ValueError(str(err)) from None


def _upstream_options_model(spec: str) -> type[BaseModel]:
    from speechfuse.fusion.upstream import upstream_options

    return _component(upstream_options, spec)


def _interface_options_model(name: str) -> type[BaseModel]:
    from speechfuse.fusion.interfaces import INTERFACES

    return _component(INTERFACES.get, name).Options


def _aligner_options_model() -> type[BaseModel]:
    from speechfuse.fusion.align import AlignerOptions

    return AlignerOptions


class UpstreamConfig(_Strict):
    spec: str
    """A registered upstream (speechfuse.list_upstreams()) or hf:<hub id or folder>."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Options of that upstream, typed by its Options model, e.g. {trainable: true, max_layers: 5}."""

    @field_validator("spec")
    @classmethod
    def _known_upstream(cls, v: str) -> str:
        _upstream_options_model(v)
        return v

    @field_validator("options")
    @classmethod
    def _typed_upstream_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        spec = info.data.get("spec")
        return v if spec is None else _given_options(_upstream_options_model(spec), v)


class AlignConfig(BaseModel):
    """speechfuse.Aligner's options (AlignerOptions); unset keys keep its defaults (max rate / layers / width,
    interpolate, min length)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="after")
    def _typed_aligner_options(self) -> "AlignConfig":
        given = {k: v for k, v in (self.model_extra or {}).items() if v is not None}  # null: the default
        self.__pydantic_extra__ = _given_options(_aligner_options_model(), given)
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InterfaceConfig(BaseModel):
    """`name` plus that interface's own options typed by its Options model.

    `layer_norm` defaults to true for the interfaces that take it (weighted_sum, hconv, chconv): the per-layer
    non-affine layer norm of the training protocol (docs/plateau.md); `layer_norm: false` gives the papers'
    plain definition."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "hconv"

    @field_validator("name")
    @classmethod
    def _known_interface(cls, v: str) -> str:
        _interface_options_model(v)
        return v

    @model_validator(mode="after")
    def _typed_interface_options(self) -> "InterfaceConfig":
        self.__pydantic_extra__ = _given_options(_interface_options_model(self.name), dict(self.model_extra or {}))
        return self

    def options(self) -> dict[str, Any]:
        options = dict(self.model_extra or {})
        if "layer_norm" not in options:
            from speechfuse.fusion.interfaces import INTERFACES

            if self.name in INTERFACES and "layer_norm" in INTERFACES.get(self.name).Options.model_fields:
                options["layer_norm"] = True
        return options


class SpecAugConfig(_Strict):
    """`train.specaug`: SpecAugment on the fused features while training (speechfuse.training.augment). Defaults are
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
    span: Literal["utterance", "batch"] = "utterance"
    """What the masks are drawn over: each utterance's valid frames (widths and places scaled to it), or the
    padded batch, as s3prl's and ESPnet's MaskAlongAxis do (the paper configs' setting)."""

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
    lr: float = Field(5e-3, gt=0)
    """The head's learning rate (and the upstreams' when they train)."""
    interface_lr: float = Field(1e-2, gt=0)
    interface_lr_scaling: Literal["none", "fan_in"] = "fan_in"
    """fan_in: each nn.Linear / nn.Conv1d of the interface and aligner (weight and bias) trains at
    interface_lr / sqrt(fan_in), fan_in = the weight's inputs x kernel width (the bound of torch's default
    init), so Adam moves every weight matrix by the same share of its initial scale; other interface
    parameters (weighted_sum's layer logits, ...) keep interface_lr. On by default with grad_clip 1.0 (the
    protocol under which every interface leaves CTC's blank plateau, docs/plateau.md); none = the former default."""
    upstream_lr: Optional[float] = Field(None, gt=0)
    """For upstreams with options {trainable: true}; default: lr."""
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warmup over this many steps (0: none)."""
    grad_clip: Optional[float] = Field(1.0, gt=0)
    """Clip the gradient norm at this value (null: no clipping, the former default)."""
    average_best: Optional[int] = Field(None, ge=1)
    """Report the mean of the N checkpoints with the lowest dev loss (ESPnet's valid.loss.ave) instead of the
    one with the best dev main metric (speechfuse.training.average); null: off."""
    report_test_chosen: bool = False
    """Also report SUPERB's VoxCeleb1 number from the same run: keep a weights-only checkpoint at every dev
    evaluation (RUN/checkpoints/steps/, as s3prl's save_step with max_keep covering them all), score the test
    split with each after training, and write the best as `test_chosen_on_test` (with its step) in
    metrics.json, the model card and `speechfuse table` (marked †). The dev-chosen test metrics stay the main
    result (with average_best, the average, which is none of the step checkpoints). Needs data.test; costs one
    test pass per dev evaluation (speechfuse.training.test_chosen)."""
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
    """One bar on stderr counting optimizer steps out of max_steps (`--quiet` turns it off too)."""
    logger: Union[Literal["tensorboard", "csv", "wandb", "mlflow"], list[Literal["tensorboard", "csv", "wandb",
                                                                                   "mlflow"]]] = "tensorboard"
    """Where the curves are logged besides RUN/logs/csv (always written; RUN/curves.png is drawn from it):
    tensorboard (RUN/logs/tensorboard), csv (nothing more), wandb or mlflow (Lightning's loggers; install the
    package: pip install wandb / mlflow), or a list of them."""
    deterministic: bool = True
    """Deterministic torch algorithms where they exist (Lightning's `deterministic="warn"`)."""
    importance: bool = True
    """After training, compute per-(model, layer) drop-one-layer importance on one dev batch."""
    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    """A NaN/inf training loss: stop the run with an error naming the step, or skip that batch (no update)."""
    allow_changed_data: bool = False
    """Resume even though a manifest's contents changed since the run started (default: refuse)."""
    specaug: Optional[SpecAugConfig] = None
    """SpecAugment time and feature masks on the fused features in training steps (null: off)."""
    bucket_utterances: Optional[int] = Field(None, gt=0)
    """Training batches as s3prl's ASR buckets of this many clips, longest first, each bucket halved when its
    longest clip is over half_batch_over_seconds (speechfuse.data.batching.s3prl_buckets), instead of
    batch_seconds (which still batches dev and test). null: batch_seconds."""
    half_batch_over_seconds: float = Field(0.125, ge=0)
    """s3prl HALF_BATCHSIZE_TIME = 2000 samples at 16 kHz."""
    crop_seconds: Optional[float] = Field(None, gt=0)
    """Training batches see a random span of at most this many seconds of each longer clip (s3prl's SV
    recipe crops to 8 s); dev, test and predict always see the whole clip. null: whole clips."""


class CacheConfig(_Strict):
    """The feature cache (used only when every upstream is frozen). `cache: <word>` is short for `cache: {dir: <word>}`."""

    dir: str = "auto"
    """auto: the user's cache, $SPEECHFUSE_HOME/cache (default ~/.cache/speechfuse/cache), shared by every
    train, sweep and extract; off: always run the upstreams; anything else: that folder."""
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
    plugins: list[str] = Field(default_factory=list)
    """Modules imported before the rest is validated, whose decorators register a plug-in's upstreams,
    interfaces and tasks (like `--plugin MODULE`; see docs/extending.md). The module of every plug-in
    component the config names is added, so a run folder's config.yaml reloads them (evaluate, prune)."""
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
        from speechfuse.tasks import list_tasks

        if v not in list_tasks():
            raise ValueError(f"unknown task {v!r}; known: {', '.join(list_tasks())}")
        return v

    @field_validator("downstream")
    @classmethod
    def _typed_head_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        task = info.data.get("task")
        if task is None:  # the task itself is invalid and reported as such
            return v
        from speechfuse.tasks import task_options

        # a ValidationError raised here is reported under downstream.<key>, like any other key
        return task_options(task).model_validate(v).model_dump(exclude_unset=True)

    @model_validator(mode="after")
    def _record_plugin_modules(self) -> "Config":
        from speechfuse.fusion.interfaces import INTERFACES
        from speechfuse.tasks import TASKS
        from speechfuse.fusion.upstream import UPSTREAMS

        entries = [TASKS.get(self.task), INTERFACES.get(self.interface.name)]
        entries += [UPSTREAMS.get(u.spec) for u in self.upstreams if not u.spec.startswith("hf:")]
        modules = [e.__module__ for e in entries]
        extra = [m for m in modules if m.split(".")[0] not in ("speechfuse", "__main__")
                 and not any(m == p or m.startswith(p + ".") for p in self.plugins)]  # a listed package covers its modules
        self.plugins.extend(dict.fromkeys(extra))  # in place: an assignment would validate the model again
        return self

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


def _component_keys(loc: tuple, data: dict) -> list[str] | None:
    """The valid keys of a component's options section at `loc` (None: not such a section)."""
    try:
        if loc[:1] == ("downstream",) and len(loc) == 2:
            from speechfuse.tasks import task_options

            return list(task_options(data.get("task")).model_fields)
        if loc[:1] == ("align",) and len(loc) == 2:
            return list(_aligner_options_model().model_fields)
        if loc[:1] == ("interface",) and len(loc) == 2:
            return ["name", *_interface_options_model((data.get("interface") or {}).get("name", "hconv")).model_fields]
        if loc[:1] == ("upstreams",) and len(loc) == 4 and loc[2] == "options":
            entry = data["upstreams"][loc[1]]
            return list(_upstream_options_model(entry if isinstance(entry, str) else entry["spec"]).model_fields)
    except (SpeechfuseError, ValueError, LookupError, TypeError, AttributeError):  # that name is itself reported
        return None
    return None


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` under `root` (for listing valid keys)."""
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


def error_lines(err: ValidationError, root: type[BaseModel], data: Any = None) -> list[str]:
    """One line per problem in `err` (raised validating `root` from `data`), each naming the dotted key."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = _dotted(loc) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            keys = _component_keys(loc, data) if root is Config and isinstance(data, dict) else None
            if keys is None:
                model = _model_at(loc, root)
                keys = list(model.model_fields) if model else None
            valid = ", ".join(keys) if keys is not None else "?"
            lines.append(f"unknown key '{key}'; valid keys here: {valid}")
        elif kind == "missing":
            lines.append(f"missing required key '{key}'")
        elif kind in _TYPE_WORDS:
            lines.append(f"key '{key}' must be {_TYPE_WORDS[kind]}, got {e.get('input')!r}")
        else:
            message = e["msg"].removeprefix("Value error, ")  # a validator's own sentence
            lines.append(f"key '{key}': {message} (got {e.get('input')!r})")
    return lines


def _explain(err: ValidationError, source: str, data: Any = None) -> ConfigError:
    return ConfigError(f"invalid config {source}:\n  " + "\n  ".join(error_lines(err, Config, data)))


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
    plugins = data.get("plugins")
    if isinstance(plugins, list):  # before the components they register are looked up; a wrong type is reported below
        try:
            load_plugins(plugins, "plugins")
        except ConfigError as err:
            raise ConfigError(f"config {source}: {err}") from err.__cause__
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise _explain(err, source, data) from None
    base = Path(base_dir).resolve()
    for split in ("train", "dev", "test"):
        value = getattr(cfg.data, split)
        if value is not None:
            setattr(cfg.data, split, _resolve(value, base))
    if cfg.cache.dir not in ("auto", "off"):
        cfg.cache.dir = _resolve(cfg.cache.dir, base)
    from speechfuse.tasks import task_options

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
    data.pop("launcher", None)  # where a sweep's jobs run (speechfuse.experiments.launcher), not part of any run
    if isinstance(data.get("cache"), (str, bool)):  # so that `--set cache.key=content` finds a section
        data["cache"] = {"dir": data["cache"]}
    data = apply_overrides(data, overrides)
    return config_from_dict(data, path.parent, str(path))


def config_to_dict(cfg: Config) -> dict:
    data = cfg.model_dump(mode="json")
    if not data["plugins"]:  # a config of built-in components reads (and is saved) as before plug-ins existed
        del data["plugins"]
    return data


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def device_train_options(device: str) -> dict[str, str]:
    """A torch device (cpu, cuda, cuda:N) as the train keys Lightning reads (train.accelerator, train.devices)."""
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device == "cpu":
        return {"accelerator": "cpu"}
    if device == "cuda":
        return {"accelerator": "gpu"}
    return {"accelerator": "gpu", "devices": f"{device[5:]},"}  # Lightning reads "N," as GPU index N


__all__ = ["Config", "CacheConfig", "DataConfig", "UpstreamConfig", "AlignConfig", "InterfaceConfig", "TrainConfig",
           "load_config", "config_from_dict", "config_to_yaml", "config_to_dict", "parse_override",
           "apply_overrides", "error_lines", "device_train_options"]
