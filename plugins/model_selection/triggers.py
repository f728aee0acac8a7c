"""The trigger that waits for a job (a tuning job, or the screen's training job) in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from model_selection.job_kinds import KINDS, TUNING
from model_selection.job_status import RUNNING

MAX_BACKOFF_SECONDS = 600.0


class TuningJobTrigger(BaseTrigger):
    """Polls the job (`kind`: tuning or training) through its backend's hook until it ends or the deadline passes.

    The deadline is an absolute time, so a triggerer restart does not extend it; a
    throttled describe backs off exponentially and never ends the wait. When a user kills
    the deferred task (mark failed, clear), `on_kill` stops the job unless `stop_on_kill`
    is off, as the Amazon provider's SageMaker operators offer.
    The event's `outcome` is one of job_status's outcomes, `timeout` or `error`.
    """

    def __init__(self, job_name: str, hook_params: dict[str, Any], poll_interval: float, deadline: float,
                 stop_on_kill: bool = True, kind: str = TUNING.name):
        super().__init__()
        self.kind = KINDS[kind]
        self.job_name = job_name
        self.hook_params = hook_params
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.stop_on_kill = stop_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "model_selection.triggers.TuningJobTrigger",
            {"job_name": self.job_name, "hook_params": self.hook_params, "poll_interval": self.poll_interval,
             "deadline": self.deadline, "stop_on_kill": self.stop_on_kill, "kind": self.kind.name},
        )

    def _hook(self) -> Any:
        from model_selection.hooks import tuning_job_hook

        return tuning_job_hook(self.hook_params)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from model_selection.hooks import Throttled

        hook = await asyncio.to_thread(self._hook)
        delay = self.poll_interval
        throttled = 0
        last_progress = None
        while True:
            try:
                description = await asyncio.to_thread(self.kind.describe, hook, self.job_name)
            except Throttled:
                throttled += 1
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                self.log.warning("describe of %s throttled (%d so far); next try in %.0f s", self.job_name, throttled, delay)
                await asyncio.sleep(delay)
                continue
            except Exception as error:  # noqa: BLE001 - anything else ends the wait with its reason
                yield self._event("error", f"{type(error).__name__}: {error}", throttled)
                return
            if description is None:
                yield self._event("error", f"no {self.kind.noun} named {self.job_name}", throttled)
                return
            delay = self.poll_interval
            outcome, reason = self.kind.outcome(description)
            status = description[self.kind.status_key]
            if outcome != RUNNING:
                best = (description.get("BestTrainingJob") or {}).get("TrainingJobName")
                yield self._event(outcome, reason, throttled, status, best)
                return
            if self.kind.progress(description) != last_progress:
                last_progress = self.kind.progress(description)
                self.log.info(last_progress)
            if time.time() >= self.deadline:
                yield self._event("timeout", f"{self.job_name} was still {status} when the sensor's timeout passed",
                                  throttled, status)
                return
            await asyncio.sleep(self.poll_interval)

    def _event(self, outcome: str, reason: str | None, throttled: int, job_status: str | None = None,
               best_training_job: str | None = None) -> TriggerEvent:
        return TriggerEvent({"outcome": outcome, "job_name": self.job_name, "reason": reason, "throttled": throttled,
                             "job_status": job_status, "best_training_job": best_training_job})

    async def on_kill(self) -> None:
        """The user killed the waiting task: stop the job it waits for, so nobody pays for it."""
        if not self.stop_on_kill:
            return
        hook = await asyncio.to_thread(self._hook)
        stopped = await asyncio.to_thread(self.kind.stop, hook, self.job_name)
        self.log.info("%s %s", self.job_name, "asked to stop" if stopped else "had ended already")
