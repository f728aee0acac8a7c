"""The trigger that waits for a tuning job in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from model_selection.backends.api import THROTTLING_CODES, error_code
from model_selection.job_status import RUNNING, progress, tuning_job_outcome

MAX_BACKOFF_SECONDS = 600.0


class TuningJobTrigger(BaseTrigger):
    """Polls `DescribeHyperParameterTuningJob` until the job ends or the deadline passes.

    The deadline is an absolute time, so a triggerer restart does not extend it; a
    throttled describe backs off exponentially and never ends the wait.
    """

    def __init__(self, job_name: str, client: dict[str, Any], poll_interval: float, deadline: float):
        super().__init__()
        self.job_name = job_name
        self.client = client
        self.poll_interval = poll_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "model_selection.triggers.TuningJobTrigger",
            {"job_name": self.job_name, "client": self.client, "poll_interval": self.poll_interval,
             "deadline": self.deadline},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from model_selection.backends import get_client

        client = await asyncio.to_thread(get_client, **self.client)
        delay = self.poll_interval
        throttled = 0
        last_progress = None
        while True:
            try:
                description = await asyncio.to_thread(
                    client.describe_hyper_parameter_tuning_job, HyperParameterTuningJobName=self.job_name
                )
            except Exception as error:  # noqa: BLE001 - throttling waits; anything else ends the wait with its reason
                if error_code(error) not in THROTTLING_CODES:
                    yield TriggerEvent({"status": "error", "job_name": self.job_name,
                                        "reason": f"{type(error).__name__}: {error}", "throttled": throttled})
                    return
                throttled += 1
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                self.log.warning("describe of %s throttled (%d so far); next try in %.0f s", self.job_name, throttled, delay)
                await asyncio.sleep(delay)
                continue
            delay = self.poll_interval
            outcome, reason = tuning_job_outcome(description)
            if outcome != RUNNING:
                yield TriggerEvent({"status": outcome, "job_name": self.job_name, "reason": reason,
                                    "throttled": throttled, "job_status": description["HyperParameterTuningJobStatus"]})
                return
            if progress(description) != last_progress:
                last_progress = progress(description)
                self.log.info(last_progress)
            if time.time() >= self.deadline:
                yield TriggerEvent({"status": "timeout", "job_name": self.job_name, "throttled": throttled,
                                    "reason": f"{self.job_name} was still {description['HyperParameterTuningJobStatus']} "
                                              "when the sensor's timeout passed"})
                return
            await asyncio.sleep(self.poll_interval)
