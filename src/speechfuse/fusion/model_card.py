"""The YAML front matter of a model folder's README.md, in the Hugging Face model-card metadata layout, so a
model hub can index the model: library, tags, pipeline tag, the upstreams as base models, and the metrics
per split with their 95 % bootstrap interval (`model-index`). Nothing in it is a local absolute path: the
training data are named by their manifest file name and SHA-256 prefix.

    text = front_matter(config)        # config: the model folder's config.json as a dict
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

LIBRARY = "speechfuse"


def data_identity(manifests: dict[str, str]) -> dict[str, dict[str, str]]:
    """split -> {file: the manifest's file name, sha256: the first 16 hex digits of its contents}."""
    from speechfuse.training.runfolder import file_sha256

    return {split: {"file": Path(path).name, "sha256": file_sha256(path)[:16]}
            for split, path in manifests.items() if path and Path(path).is_file()}


def public_spec(spec: str) -> str:
    """An upstream spec as a card may show it: a local folder by its name only."""
    if spec.startswith("hf:"):
        target = spec[3:]
        if os.path.isabs(target) or Path(target).expanduser().exists():
            return f"hf:{Path(target).name} (local folder)"
    return spec


def base_models(upstreams: list[dict[str, Any]]) -> list[str]:
    """Hub ids of the upstreams that are hub models (`hf:ORG/NAME`); local folders and bundled models have none."""
    out = []
    for u in upstreams:
        spec = u.get("spec", "")
        if spec.startswith("hf:") and public_spec(spec) == spec and "/" in spec[3:]:
            out.append(spec[3:])
    return out


def _pipeline_tag(task_name: str) -> str | None:
    from speechfuse.tasks import TASKS

    try:
        return getattr(TASKS.get(task_name), "hub_pipeline_tag", None)
    except Exception:  # a task of a plug-in that is not loaded: no tag
        return None


def _results(task_name: str, metrics: dict[str, dict[str, float]], data: dict[str, dict[str, str]],
             pipeline_tag: str | None) -> list[dict[str, Any]]:
    from speechfuse.training.runfolder import TEST_CHOSEN

    results = []
    for split, values in metrics.items():
        if split == TEST_CHOSEN:  # chosen on test: in the card's text, labelled, never as a hub result
            continue
        entries = []
        for name, value in values.items():
            if name.startswith("ci_"):
                continue
            entry: dict[str, Any] = {"type": name, "name": f"{name} ({split})", "value": round(float(value), 6)}
            low, high = values.get(f"ci_low_{name}"), values.get(f"ci_high_{name}")
            if low is not None and high is not None:
                entry["args"] = {"interval_95": [round(float(low), 6), round(float(high), 6)],
                                 "interval": "bootstrap over utterances"}
            entries.append(entry)
        manifest = data.get(split, {})
        dataset: dict[str, Any] = {"name": manifest.get("file", f"{split} manifest"), "type": "custom", "split": split}
        if manifest.get("sha256"):
            dataset["revision"] = f"sha256:{manifest['sha256']}"
        results.append({"task": {"type": pipeline_tag or task_name}, "dataset": dataset, "metrics": entries})
    return results


def front_matter(config: dict[str, Any]) -> str:
    """`---\\n<yaml>\\n---\\n` for a model folder's config.json dict."""
    task_name = config["task"]["name"]
    interface = config["interface"]["name"]
    training = config.get("training") or {}
    tag = _pipeline_tag(task_name)
    meta: dict[str, Any] = {"library_name": LIBRARY,
                            "tags": [LIBRARY, "audio", "speech", f"task:{task_name}", f"interface:{interface}",
                                     *(f"upstream:{public_spec(u['spec'])}" for u in config["upstreams"])]}
    if tag:
        meta["pipeline_tag"] = tag
    bases = base_models(config["upstreams"])
    if bases:
        meta["base_model"] = bases
    if training.get("metrics"):
        meta["model-index"] = [{"name": f"speechfuse-{task_name}-{interface}",
                                "results": _results(task_name, training["metrics"], training.get("data", {}), tag)}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def training_data_line(config: dict[str, Any]) -> str:
    """`train.csv` (sha256 0123456789abcdef), or the file name alone when no fingerprint was recorded."""
    training = config.get("training") or {}
    data = (training.get("data") or {}).get("train")
    if data:
        return f"`{data['file']}` (sha256 {data['sha256']})"
    path = ((training.get("config") or {}).get("data") or {}).get("train")
    return f"`{Path(path).name}`" if path else "(unknown data)"


__all__ = ["front_matter", "data_identity", "public_spec", "base_models", "training_data_line"]
