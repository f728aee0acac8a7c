"""What the plan decides about the screen: which candidates it can score, and the one training job that does.

A local candidate is scored on the very model its trainer loads. A SageMaker candidate (a JumpStart id)
is scored on its exact timm twin (include/model_maps: the same TensorFlow weights, ported), which the
screen job loads from the model hub; a candidate without an exact twin cannot be scored, and is either
fine-tuned unscored or left out (`screen.unscored`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_selection.screening import ScreenSettings


def scorable_candidates(backend: str, launches: list[Mapping[str, Any]], project_root: Path
                        ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """([{"model_id", "static_hyperparameters"}] the screen job scores, {model id: why it cannot be scored}).

    Launches that attach to a running job are not candidates: their job is paid for already.
    """
    candidates = [launch for launch in launches if not launch["attaching"]]
    if backend == "local":
        return [{"model_id": launch["model_id"], "static_hyperparameters": launch["spec"]["static_hyperparameters"]}
                for launch in candidates], {}
    from model_selection.local.jumpstart_map import translate_jumpstart_ids

    translation = translate_jumpstart_ids([launch["model_id"] for launch in candidates], project_root,
                                          allow_approximate=False)
    scored, unscored = [], {}
    for launch in candidates:
        model_id = launch["model_id"]
        if model_id in translation.timm_names:
            scored.append({"model_id": model_id, "static_hyperparameters": {
                "model_id": translation.timm_names[model_id], "pretrained": "true", "image_size": "auto",
                "pretrained_image_size": str(translation.input_sizes[model_id])}})
        else:
            reason = translation.left_out().get(model_id) or "not in the JumpStart-to-timm map"
            unscored[model_id] = f"no exact timm twin to score it on ({reason})"
    return scored, unscored


def screen_log_line(settings: ScreenSettings, scored: int, unscored: dict[str, str], trials: int,
                    backend: str, finished: int = 0) -> str:
    """The plan's statement of what the screen will do and spare, before anything runs. `finished` of the
    `scored` candidates are fine-tuned already: they are ranked with the others and not trained again."""
    from model_selection.screening import training_jobs_saved

    sample = "every image" if settings.sample_per_class is None else f"at most {settings.sample_per_class} images per class"
    kept_unscored = len(unscored) if settings.unscored == "fine_tune" else 0
    pending = scored - finished
    saved = training_jobs_saved(pending, settings.keep_top, trials)
    where = (f"one SageMaker training job on {settings.instance_type}" if backend == "sagemaker"
             else "one local job")
    line = (f"screen: {scored} candidate(s) scored on {sample} of training and validation, in {where}; the best "
            f"{min(settings.keep_top, scored)} fine-tuned")
    if finished:
        line += (f" ({finished} of the candidates fine-tuned already, ranked with the others and not trained again); "
                 f"saves at least {saved} training job(s) ({max(pending - settings.keep_top, 0)} tuning job(s) "
                 f"of {trials} trial(s) each)")
    else:
        line += (f"; saves {saved} training job(s) ({max(pending - settings.keep_top, 0)} tuning job(s) of {trials} "
                 "trial(s) each)")
    if unscored:
        line += (f"; {len(unscored)} candidate(s) without an exact timm twin "
                 + (f"fine-tuned unscored: {', '.join(unscored)}" if kept_unscored else f"left out: {', '.join(unscored)}"))
    return line


def saving_estimate(rows: list[Mapping[str, Any]], dataset: str, config_hash: str, instance_type: str,
                    screen_instance_type: str, jobs_saved: int) -> str:
    """SageMaker: what the training jobs the screen spares would cost, from what this configuration's jobs have
    billed so far (the results store), at the price table's rate; and the rate the screen job pays.

    No estimate without history: a job's length depends on the model and the data, and the plan has seen
    none of this configuration's yet.
    """
    from model_selection.cost import as_number, load_prices

    prices = load_prices()
    billed = [(as_number(row.get("billable_seconds")), as_number(row.get("training_jobs"))) for row in rows
              if row.get("dataset") == dataset and row.get("config_hash") == config_hash]
    billed = [(seconds, jobs) for seconds, jobs in billed if seconds is not None and jobs]
    rate, screen_rate = prices.price(instance_type), prices.price(screen_instance_type)
    screen_part = (f"the screen job pays ${screen_rate:.3f}/h on {screen_instance_type}" if screen_rate is not None
                   else f"the price table has no rate for {screen_instance_type}")
    if not billed or rate is None or not jobs_saved:
        why = ("no training job of this configuration has billed yet" if not billed
               else f"the price table has no rate for {instance_type}" if rate is None else "it spares no job")
        return f"screen cost: the saving is not estimated ({why}); {screen_part} (price table of {prices.as_of})"
    per_job = sum(seconds for seconds, _ in billed) / sum(jobs for _, jobs in billed)
    hours = jobs_saved * per_job / 3600
    return (f"screen cost: the {jobs_saved} training job(s) it spares would bill about {hours:.2f} instance-hours "
            f"(this configuration's {sum(jobs for _, jobs in billed):.0f} billed job(s) averaged {per_job / 60:.1f} min), "
            f"about ${hours * rate:.2f} at ${rate:.3f}/h on {instance_type}; {screen_part} "
            f"(price table of {prices.as_of})")
