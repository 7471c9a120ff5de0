"""FusedModel: the trained model as one unit (upstreams + aligner + interface + head + the task's state).

    import speechfuse as sf
    model = sf.load_model("runs/speaker")          # a run folder (its model/) or a saved model folder
    model.predict(["a.wav", "b.wav"])               # see speechfuse.serving.inference
    model.verify("a.wav", "b.wav")                  # verification models: score and decision
    model.save_pretrained("speaker-model")

A model folder (what `save_pretrained` writes, and every training run writes as RUN_DIR/model/):
    config.json        format; the task state (vocabulary or labels); per upstream its spec, load options and
                       identity (output-changing options, weight fingerprint); align and interface options; the
                       manifest field the targets came from; the SHA-256 of model.safetensors; training summary;
                       `model_sha256`: one digest over this file's content and model.safetensors (model_digest), so
                       neither can be edited or swapped alone: loading refuses a folder without it or where it does
                       not match, unless trust_unverified=True (CLI: --allow-unverified), which only warns
    model.safetensors  only the trained weights: interface, aligner projections, head, and upstreams only where
                       they were trained (plus `task.*`: the task's fitted tensors, verify's AS-norm cohort).
                       Frozen upstream weights are loaded from their spec and checked against the saved
                       fingerprint.
    README.md          what the model is, how it was trained, its metrics

No pickle anywhere: safetensors + JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from speechfuse.errors import ConfigError, SpeechfuseError, UpstreamError
from speechfuse.fusion.frontend import FusionFrontend
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.io import write_atomic
from speechfuse.training.runfolder import MODEL_DIR as RUN_MODEL_DIR, TEST_CHOSEN  # RUN_DIR/model/: the run folder's layout is speechfuse.training.runfolder's
from speechfuse.tasks import Task, get_task

if TYPE_CHECKING:
    from speechfuse.config import Config

MODEL_FORMAT = "speechfuse-model-v1"
CONFIG_FILE, WEIGHTS_FILE, README_FILE = "config.json", "model.safetensors", "README.md"
TASK_PREFIX = "task."  # model.safetensors keys of the task's tensors (Task.tensors(): verify's AS-norm cohort)
DIGEST_KEY = "model_sha256"  # config.json's digest of the whole folder (model_digest)


class ModelFileError(SpeechfuseError):
    """A model folder is missing, not a speechfuse model, or damaged."""


class UpstreamChangedError(UpstreamError):
    """An upstream's weights (or options) differ from those the model was trained with."""


# ---------------------------------------------------------------------------------------------
# factories (a Config in, the parts out): the runner and FusedModel build through these
# ---------------------------------------------------------------------------------------------
def build_frontend_from(upstreams: list[dict[str, Any]], align: dict[str, Any],
                        interface: dict[str, Any]) -> FusionFrontend:
    """upstreams: [{"spec", "options"}]; align: Aligner options; interface: {"name", **options}."""
    from speechfuse.fusion.upstream import load_upstream

    loaded = []
    for i, u in enumerate(upstreams):
        try:
            loaded.append(load_upstream(u["spec"], **u.get("options", {})))
        except TypeError as err:
            raise ConfigError(f"upstreams[{i}].options {u.get('options')}: {err}") from err
    options = {k: v for k, v in interface.items() if k != "name"}
    try:
        return FusionFrontend(loaded, interface=interface["name"], aligner_options=align, interface_options=options)
    except TypeError as err:  # an option the interface or aligner does not take
        raise ConfigError(f"interface / align options: {err}; check the keys under 'interface:' and 'align:' "
                          f"(interface options given: {options})") from err


def architecture(cfg: "Config") -> dict[str, Any]:
    """The parts of a config that define the model (JSON)."""
    return {"upstreams": [{"spec": u.spec, "options": dict(u.options)} for u in cfg.upstreams],
            "align": cfg.align.options(),
            "interface": {"name": cfg.interface.name, **cfg.interface.options()}}


def build_frontend(cfg: "Config") -> FusionFrontend:
    arch = architecture(cfg)
    return build_frontend_from(arch["upstreams"], arch["align"], arch["interface"])


def build_task(cfg: "Config") -> Task:
    try:
        return get_task(cfg.task, **cfg.downstream)
    except ConfigError as err:
        raise ConfigError(f"downstream: {err}") from err


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class FusedModel(nn.Module):
    """Audio in, task output out: `frontend` (upstreams -> aligner -> interface) then `head`.

    forward(wavs [B,S], wav_lengths [B]) -> (out, out_lengths): CTC logits [B,T,V] for asr, class logits
    [B,C] for classify, (embeddings [B,E], cosines with the training speakers [B,S]) for verify. `fuse_hidden(states)` runs the part after the upstreams (what `export` exports).
    The attribute names match the training module's, so a training checkpoint's state_dict loads as is.
    """

    def __init__(self, frontend: FusionFrontend, head: nn.Module, task: Task, arch: dict[str, Any],
                 target: Optional[str] = None, training: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.frontend, self.head, self.task = frontend, head, task
        self.arch = arch
        self.target = target or task.target_field  # the manifest field that holds references
        self.training_info = training or {}

    @classmethod
    def from_config(cls, cfg: "Config", task: Task, frontend: Optional[FusionFrontend] = None,
                    head: Optional[nn.Module] = None, training: Optional[dict[str, Any]] = None) -> "FusedModel":
        """Build from a config and a fitted task; pass `frontend` / `head` to wrap existing (trained) modules."""
        frontend = frontend if frontend is not None else build_frontend(cfg)
        head = head if head is not None else task.build_head(frontend.output_dim)
        arch = architecture(cfg)
        arch["upstreams"] = [{**u, "spec": _absolute_spec(u["spec"])} for u in arch["upstreams"]]
        return cls(frontend, head, task, arch, target=cfg.data.target, training=training)

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(*self.frontend(wavs, wav_lengths))

    def fuse_hidden(self, states: list[HiddenStates]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(*self.frontend.fuse(states))

    def predict(self, inputs: Any, **options: Any) -> list:
        """Predictions for files, a folder, a manifest or waveforms; see speechfuse.serving.inference.predict."""
        from speechfuse.serving.inference import predict

        return predict(self, inputs, **options)

    def verify(self, a: Any, b: Any = None, **options: Any) -> Any:
        """Trial scores and decisions of a verification model; see speechfuse.serving.inference.verify."""
        from speechfuse.serving.inference import verify

        return verify(self, a, b, **options)

    # -- saving ------------------------------------------------------------------------------------
    def frozen_keys(self) -> set[str]:
        """state_dict keys of the upstreams that were not trained (not stored: they come from the spec)."""
        return {f"frontend.upstreams.{i}.{k}" for i, up in enumerate(self.frontend.upstreams) if not up.trainable
                for k in up.state_dict()}

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        frozen = self.frozen_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def config_dict(self) -> dict[str, Any]:
        upstreams = [{**spec, "trainable": bool(up.trainable), "identity": up.identity()}
                     for spec, up in zip(self.arch["upstreams"], self.frontend.upstreams)]
        return {"format": MODEL_FORMAT, "task": self.task.state(), "target": self.target,
                "sample_rate": self.sample_rate, "upstreams": upstreams, "align": self.arch["align"],
                "interface": self.arch["interface"], "training": self.training_info}

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model folder (config.json, model.safetensors, README.md) in one step: it is built
        beside `folder` and renamed into place, so a kill never leaves a half-written model."""
        from safetensors.torch import save

        folder = Path(folder)
        if folder.exists() and not (folder / CONFIG_FILE).is_file() and any(folder.iterdir()):
            raise ModelFileError(f"save_pretrained: {folder} exists and is not a speechfuse model folder; "
                                 "pick a new or empty folder (its files would be replaced)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            state = {**self.trained_state_dict(), **{f"{TASK_PREFIX}{k}": v for k, v in self.task.tensors().items()}}
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
            write_atomic(tmp / WEIGHTS_FILE, save(tensors, metadata={"format": "pt", "speechfuse": MODEL_FORMAT}))
            weights_sha256 = _sha256(tmp / WEIGHTS_FILE)
            # the digest is taken over the config as it reads back from JSON
            config = json.loads(json.dumps({**self.config_dict(), "weights_sha256": weights_sha256}, default=float))
            config[DIGEST_KEY] = model_digest(config, weights_sha256)
            write_atomic(tmp / CONFIG_FILE, json.dumps(config, indent=2, default=float) + "\n")
            write_atomic(tmp / README_FILE, model_readme(config, self.task))
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        allow_changed_upstreams: bool = False, trust_unverified: bool = False) -> "FusedModel":
        """Rebuild a model from a model folder or a run folder (its model/), in eval mode on `device`
        (default cpu). A folder whose config.json and weights do not match their saved digest, or have none, is
        refused (ModelFileError) unless trust_unverified=True. An upstream whose weights no longer match the
        saved fingerprint is refused (UpstreamChangedError) unless allow_changed_upstreams=True. Both only warn
        when allowed."""
        folder = find_model_folder(path)
        config = read_model_config(folder)
        verify_model_folder(folder, config, trust_unverified)
        from speechfuse.plugins import load_plugins

        # the plug-in modules of the components the model was trained with (its training config lists them)
        trained_with = ((config.get("training") or {}).get("config") or {}).get("plugins") or []
        load_plugins(trained_with, f"{folder / 'config.json'}: training.config.plugins")
        task = Task.from_state(config["task"])
        arch = {k: config[k] for k in ("align", "interface")}
        arch["upstreams"] = [{"spec": u["spec"], "options": u.get("options", {})} for u in config["upstreams"]]
        frontend = build_frontend_from(arch["upstreams"], arch["align"], arch["interface"])
        check_upstreams(frontend, config["upstreams"], folder, allow_changed_upstreams, before_weights=True)
        model = cls(frontend, task.build_head(frontend.output_dim), task, arch, target=config.get("target"),
                    training=config.get("training"))
        model._load_trained(folder / WEIGHTS_FILE, config)
        check_upstreams(frontend, config["upstreams"], folder, allow_changed_upstreams, before_weights=False)
        return model.to(device or "cpu").eval()

    def _load_trained(self, path: Path, config: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:
            raise ModelFileError(f"cannot read {path}: {err}; save the model again") from err
        own = self.state_dict()
        wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape]
        if wrong:
            raise ModelFileError(_shape_mismatch(path, config, wrong))
        task_tensors = {k[len(TASK_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(TASK_PREFIX)}
        self.task.load_tensors(task_tensors, str(path))
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = sorted(set(missing) - self.frozen_keys())
        if missing or unexpected:
            raise ModelFileError(f"{path} does not fit the model its config.json describes (missing "
                                 f"{missing[:5]}, unexpected {sorted(unexpected)[:5]}); save the model again")


def check_upstreams(frontend: FusionFrontend, saved: list[dict[str, Any]], folder: Path, allow: bool,
                    before_weights: bool) -> None:
    """Frozen upstreams are checked as loaded from their spec; trained ones after the saved weights went in."""
    problems = []
    for i, (up, entry) in enumerate(zip(frontend.upstreams, saved)):
        if bool(entry.get("trainable")) == before_weights:
            continue
        ident = entry.get("identity", {})
        now = up.identity()
        who = f"upstream {i} ({entry['spec']})" if up.name == entry["spec"] else \
            f"upstream {i} ({up.name}, {entry['spec']})"
        if ident.get("fingerprint") != now["fingerprint"]:
            problems.append(f"{who}: weight fingerprint {now['fingerprint']} differs from the saved "
                            f"{ident.get('fingerprint')}")
        if ident.get("options", {}) != now["options"]:
            problems.append(f"{who}: options {now['options']} differ from the saved {ident.get('options')}")
    if not problems:
        return
    message = (f"model {folder}: " + "; ".join(problems) + ". The model was trained on other upstream weights, "
               "so its predictions would not be the ones measured")
    if not allow:
        raise UpstreamChangedError(message + ". Load the upstream version it was trained with, or pass "
                                   "allow_changed_upstreams=True (CLI: --allow-changed-upstreams) to use it anyway.")
    warnings.warn(message + "; loaded anyway (allow_changed_upstreams=True).", stacklevel=4)


def model_digest(config: dict[str, Any], weights_sha256: str) -> str:
    """The SHA-256 of config.json's content (canonical JSON, without DIGEST_KEY) and of the weights' SHA-256."""
    body = json.dumps({k: v for k, v in config.items() if k != DIGEST_KEY}, sort_keys=True, separators=(",", ":"),
                      default=float)
    return hashlib.sha256(f"{body}\n{weights_sha256}".encode("utf-8")).hexdigest()


def verify_model_folder(folder: Path, config: dict[str, Any], trust_unverified: bool = False) -> None:
    """Refuse a folder whose config.json and model.safetensors are not the pair that was saved together."""
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"{weights} is missing; the model folder is incomplete, save it again")
    actual = _sha256(weights)
    saved = config.get(DIGEST_KEY)
    if saved is None:
        problem = (f"{folder / CONFIG_FILE} has no {DIGEST_KEY}, so nothing shows that it and {WEIGHTS_FILE} are "
                   "the pair that was saved (a model saved by an older speechfuse, or edited)")
    elif config.get("weights_sha256") not in (None, actual):
        problem = f"{weights} does not match the SHA-256 in its config.json (damaged or replaced)"
    elif saved != model_digest(config, actual):
        problem = (f"{folder / CONFIG_FILE} or {WEIGHTS_FILE} changed since the model was saved (an edited "
                   f"config.json or other weights: {DIGEST_KEY} does not match)")
    else:
        return
    if not trust_unverified:
        raise ModelFileError(f"model {folder}: {problem}; use an intact copy of the model folder, or pass "
                             "trust_unverified=True (CLI: --allow-unverified) to load it anyway")
    warnings.warn(f"model {folder}: {problem}; loaded anyway (trust_unverified=True), so its predictions may not be "
                  "the ones measured", stacklevel=3)


def _shape_mismatch(path: Path, config: dict[str, Any], wrong: list[tuple[str, tuple, tuple]]) -> str:
    """One line: the first tensor whose saved shape differs from the one config.json builds, and the config.json
    keys whose value is the size that differs (e.g. task.labels has 3 entries where the weights hold 2)."""
    key, saved, built = wrong[0]
    sizes = {b for s, b in zip(saved, built) if s != b} if len(saved) == len(built) else set(built)
    suspects = [f"{name} ({value})" for name, value in _config_sizes(config) if value in sizes]
    cause = f"; config.json key{'s' if len(suspects) > 1 else ''} giving that size: {', '.join(suspects)}" \
        if suspects else ""
    more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
    return (f"{path} does not fit the model its config.json describes: {key} is {list(saved)} in the weights but "
            f"{list(built)} from config.json{more}{cause}; restore the config.json saved with these weights")


def _config_sizes(config: dict[str, Any]) -> list[tuple[str, int]]:
    """(dotted key, size) of config.json's integer options and list lengths, outside the training record."""
    found: list[tuple[str, int]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            found.append((key, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            found.append((key, len(value)))
            if all(isinstance(v, dict) for v in value):
                for i, v in enumerate(value):
                    walk(v, f"{key}[{i}]")

    walk({k: v for k, v in config.items() if k not in ("training", "sample_rate")}, "")
    return found


def find_model_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / RUN_MODEL_DIR / CONFIG_FILE).is_file():
        return path / RUN_MODEL_DIR
    if not path.exists():
        raise ModelFileError(f"model not found: {path}; give a model folder (config.json + model.safetensors) or "
                             "a run folder written by `speechfuse train`")
    raise ModelFileError(f"{path} is neither a speechfuse model folder (no {CONFIG_FILE}) nor a finished run folder "
                         f"(no {RUN_MODEL_DIR}/{CONFIG_FILE}); train it to the end, or save one with "
                         "FusedModel.save_pretrained")


def read_model_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"cannot read {path}: {err}; save the model again") from err
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ModelFileError(f"{path} is not a speechfuse model config (format {found!r}, expected "
                             f"{MODEL_FORMAT!r}); a transformers checkpoint is an upstream: use it as 'hf:{folder}'")
    missing = [k for k in ("task", "upstreams", "align", "interface") if k not in config]
    if missing:
        raise ModelFileError(f"{path} lacks {missing}; the file is damaged, save the model again")
    return config


def load_model(path: str | os.PathLike, device: str | torch.device | None = None,
               allow_changed_upstreams: bool = False, trust_unverified: bool = False) -> FusedModel:
    """sf.load_model(dir_or_run_folder): FusedModel.from_pretrained."""
    return FusedModel.from_pretrained(path, device=device, allow_changed_upstreams=allow_changed_upstreams,
                                      trust_unverified=trust_unverified)


def save_run_model(cfg: "Config", task: Task, frontend: FusionFrontend, head: nn.Module, run_dir: Path,
                   metrics: dict[str, Any], checkpoint: str) -> Path:
    """RUN_DIR/model/ from the trained modules of a run (the training hook)."""
    from speechfuse.config import config_to_dict

    from speechfuse.fusion.model_card import data_identity

    manifests = {split: getattr(cfg.data, split) for split in ("train", "dev", "test")}
    training = {"config": config_to_dict(cfg), "checkpoint": checkpoint, "metrics": metrics,
                "data": data_identity(manifests)}
    model = FusedModel.from_config(cfg, task, frontend=frontend, head=head, training=training)
    return model.save_pretrained(Path(run_dir) / RUN_MODEL_DIR)


def model_readme(config: dict[str, Any], task: Task) -> str:
    from speechfuse.fusion.model_card import front_matter, public_spec, training_data_line

    ups = config["upstreams"]
    upstreams = ", ".join(f"`{public_spec(u['spec'])}`" + (" (fine-tuned)" if u.get("trainable") else "") for u in ups)
    what = task.describe(config.get("target"))
    lines = [f"# speechfuse model: {what}", "",
             f"Upstreams: {upstreams}, fused by the `{config['interface']['name']}` interface, "
             f"input {config['sample_rate']} Hz audio.", ""]
    training = config.get("training") or {}
    cfg = training.get("config")
    if cfg:
        t = cfg.get("train", {})
        lines += [f"Trained with speechfuse for {t.get('max_steps')} steps (batches of {t.get('batch_seconds')} s, "
                  f"lr {t.get('lr')}, interface lr {t.get('interface_lr')}, seed {t.get('seed')}) on "
                  f"{training_data_line(config)}; weights of the {training.get('checkpoint', 'best')} "
                  "dev checkpoint.", ""]
    metrics = dict(training.get("metrics") or {})
    chosen = metrics.pop(TEST_CHOSEN, None)
    if metrics:
        lines += metrics_table(metrics, task.main_metric) + [""]
    if chosen:
        lines += [chosen_on_test_line(chosen, task.main_metric), ""]
    lines += ["```python", "import speechfuse as sf", "model = sf.load_model(\"path/to/this/folder\")",
              "print(model.predict(\"clip.wav\"))", "```", "",
              "`model.safetensors` holds only the trained weights; the frozen upstreams load from their specs and "
              "must match the weight fingerprints in `config.json`.", ""]
    return front_matter(config) + "\n".join(lines)


def chosen_on_test_line(chosen: dict[str, Any], main_metric: str) -> str:
    """The card's sentence for train.report_test_chosen (speechfuse.training.test_chosen), labelled as such."""
    return (f"Chosen on test (SUPERB's VoxCeleb1 rule, `train.report_test_chosen`; not a held-out estimate): test "
            f"{main_metric} {chosen[main_metric]:.4f} at step {chosen['step']}, the best of "
            f"{chosen['checkpoints_scored']} checkpoints each scored on test. The metrics above are the dev-chosen "
            "checkpoint's.")


def metrics_table(metrics: dict[str, dict[str, Any]], first: str) -> list[str]:
    """Markdown lines of a {split: {metric: value}} table: one header (every metric of any split, `first`
    then the rest sorted) and one row per split, each cell under its own metric's name ("–": not measured)."""
    names = sorted({name for values in metrics.values() for name in values}, key=lambda n: (n != first, n))

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:.4f}" if isinstance(value, (int, float)) else str(value)

    return (["| split | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)] +
            [f"| {split} | " + " | ".join(cell(values.get(n)) for n in names) + " |"
             for split, values in metrics.items()])


def _absolute_spec(spec: str) -> str:
    """hf:<relative folder> -> hf:<absolute folder>, so a saved model does not depend on the working directory."""
    if spec.startswith("hf:") and Path(spec[3:]).expanduser().is_dir():
        return "hf:" + str(Path(spec[3:]).expanduser().resolve())
    return spec


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["FusedModel", "load_model", "build_frontend", "build_frontend_from", "build_task", "architecture",
           "save_run_model", "ModelFileError", "UpstreamChangedError", "MODEL_FORMAT"]
