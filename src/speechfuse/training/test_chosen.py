"""`train.report_test_chosen`: SUPERB's VoxCeleb1 number next to the dev-chosen one, from one run.

SUPERB's sv_voxceleb1 has no dev set: s3prl's `test_expdir.sh` scores the test trials with every saved
checkpoint (save_step, max_keep) and reports the best EER. With `train.report_test_chosen: true`, training keeps
the weights of every dev evaluation in RUN/checkpoints/steps/step=<N>.safetensors; after training each is scored
on the test split and the best by the task's main metric (the earliest step on a tie) goes into metrics.json:

    "test_chosen_on_test": {"step": 200, "checkpoint": "step=200.safetensors", "eer": 0.21, ...,
                            "checkpoints_scored": 3, "per_checkpoint": [{"step": 100, "eer": 0.25, ...}, ...]}

That value is chosen on test, so it is not a held-out estimate: the `test` metrics of the dev-chosen checkpoint
stay the run's result, and every place that shows the test-chosen one labels it so.
"""
from __future__ import annotations

from typing import Any, Optional

from speechfuse.errors import SpeechfuseError
from speechfuse.serving.evaluate import collect_records, load_weights, score
from speechfuse.training.runfolder import RunFolder


def score_step_checkpoints(model: Any, data: Any, run: RunFolder, scoring: Optional[list] = None) -> list[dict]:
    """{step, checkpoint, <test metrics>} of every kept step checkpoint, earliest first. `scoring`: the
    utterances a task fits its scoring on per checkpoint (verify: the AS-norm cohort), as the main result does."""
    checkpoints = run.step_checkpoints()
    if not checkpoints:
        raise SpeechfuseError(f"train.report_test_chosen: {run.checkpoints_dir} holds no step checkpoints to score "
                              "on test; was the run resumed from one trained without the option?")
    results = []
    for step, path in checkpoints:
        load_weights(model, path)
        if scoring:
            model.task.fit_scoring(collect_records(model, data.utterance_loader(scoring))[0])
        results.append({"step": step, "checkpoint": path.name, **score(model, data.test_dataloader(), "test")})
    return results


def choose_on_test(per_checkpoint: list[dict], main_metric: str, higher_is_better: bool) -> dict:
    """The checkpoint with the best test `main_metric` (earliest step on a tie), with the count and the list."""
    sign = -1.0 if higher_is_better else 1.0
    best = min(per_checkpoint, key=lambda r: (sign * r[main_metric], r["step"]))
    return {**best, "checkpoints_scored": len(per_checkpoint), "per_checkpoint": per_checkpoint}


__all__ = ["score_step_checkpoints", "choose_on_test"]
