"""The operator that launches one model's tuning job, exactly once, within the study's quota."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from model_selection.backends.api import (
    RESOURCE_IN_USE,
    RESOURCE_LIMIT_EXCEEDED,
    RESOURCE_NOT_FOUND,
    THROTTLING_CODES,
    error_code,
)
from model_selection.tuning_request import build_tuning_request


class TuningJobLaunchOperator(BaseOperator):
    """Creates the tuning job `launch` describes, or attaches to the one an earlier try created.

    `launch` is one entry of the plan: `{"model_id", "job_name", "spec", "client",
    "study_prefix", "max_concurrent_tuning_jobs"}`. The job name is derived from the data
    set, configuration and model, so a retry, a cleared task or a re-run finds its job.
    While the study already has `max_concurrent_tuning_jobs` jobs in flight, or the
    service answers ResourceLimitExceeded or throttles, the task defers and tries again
    later (the wait doubling up to `max_wait_seconds`), holding no worker slot and
    losing no model. Returns `{"job_name", "model_id", "client"}` for the sensor.
    """

    ui_color = "#e8f3ff"

    def __init__(self, *, launch: dict[str, Any], wait_seconds: float = 60, max_wait_seconds: float = 900,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.launch = launch
        self.wait_seconds = wait_seconds
        self.max_wait_seconds = max_wait_seconds

    @property
    def job_name(self) -> str:
        return self.launch["job_name"]

    def execute(self, context: Any, event: Any = None, waits: int = 0, waited_seconds: float = 0.0) -> dict[str, Any]:
        from model_selection.backends import get_client

        client = get_client(**self.launch["client"])
        result = {"job_name": self.job_name, "model_id": self.launch["model_id"], "client": self.launch["client"]}
        try:
            if self._attach(client):
                return result
            in_flight = self._in_flight(client)
            if in_flight >= self.launch["max_concurrent_tuning_jobs"]:
                self._wait(f"{in_flight} of this study's tuning jobs are in flight (limit "
                           f"{self.launch['max_concurrent_tuning_jobs']})", waits, waited_seconds)
            client.create_hyper_parameter_tuning_job(**self._request(context))
        except Exception as error:
            code = error_code(error)
            if code == RESOURCE_IN_USE and self._attach(client):
                return result
            if code == RESOURCE_LIMIT_EXCEEDED or code in THROTTLING_CODES:
                self._wait(f"the service answered {code}: {error}", waits, waited_seconds)
            raise
        self.log.info("launched %s for %s after %d waits (%.0f s waiting for quota or throttling)",
                      self.job_name, self.launch["model_id"], waits, waited_seconds)
        return result

    def _request(self, context: Any) -> dict[str, Any]:
        tags = {
            "model-selection:dag-id": context["dag"].dag_id,
            "model-selection:run-id": context["run_id"],
            "model-selection:model-id": self.launch["model_id"],
        }
        return build_tuning_request(self.job_name, **self.launch["spec"], tags=tags)

    def _attach(self, client: Any) -> bool:
        """True when the job exists already and is this model's; a name collision is an error."""
        try:
            description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.job_name)
        except Exception as error:
            if error_code(error) == RESOURCE_NOT_FOUND:
                return False
            raise
        static = description.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
        expected = build_tuning_request(self.job_name, **self.launch["spec"])["TrainingJobDefinition"][
            "StaticHyperParameters"
        ]
        if {key: static.get(key) for key in expected} != expected:
            raise AirflowFailException(
                f"a tuning job named {self.job_name} exists but was not launched for {self.launch['model_id']} "
                "with this configuration; refusing to attach to it"
            )
        self.log.info("%s already exists (%s): attaching instead of launching again", self.job_name,
                      description["HyperParameterTuningJobStatus"])
        return True

    def _in_flight(self, client: Any) -> int:
        """This study's tuning jobs in progress: one filtered listing, not a scan of all jobs."""
        answer = client.list_hyper_parameter_tuning_jobs(
            StatusEquals="InProgress", NameContains=self.launch["study_prefix"], MaxResults=100
        )
        return len(answer["HyperParameterTuningJobSummaries"])

    def _wait(self, why: str, waits: int, waited_seconds: float) -> None:
        delay = min(self.wait_seconds * 2**waits, self.max_wait_seconds)
        self.log.warning("not launching %s yet: %s; trying again in %.0f s (wait %d, %.0f s so far)",
                         self.job_name, why, delay, waits + 1, waited_seconds)
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        self.defer(
            trigger=TimeDeltaTrigger(dt.timedelta(seconds=delay)),
            method_name="execute",
            kwargs={"waits": waits + 1, "waited_seconds": waited_seconds + delay},
        )
