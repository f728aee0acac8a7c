"""The operator that launches one model's tuning job, exactly once, within the study's quota."""

from __future__ import annotations

import datetime as dt
import time
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
    losing no model. Returns `{"job_name", "model_id", "client"}` for the sensor, plus
    what the launch cost: `launch_waits`, `launch_wait_seconds` and `launch_try_number`.
    How the launch stands is also set as `launch_status` in the context, for the DAG's
    `map_index_template`, so the grid shows "waiting: ..." or "launched" per model.
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

    def execute(self, context: Any, event: Any = None, waits: int = 0, waiting_since: float | None = None) -> dict[str, Any]:
        from model_selection.backends import get_client

        client = get_client(**self.launch["client"])
        waited_seconds = round(time.time() - waiting_since, 1) if waiting_since else 0.0
        result = {"job_name": self.job_name, "model_id": self.launch["model_id"], "client": self.launch["client"],
                  "launch_waits": waits, "launch_wait_seconds": waited_seconds,
                  "launch_try_number": getattr(context.get("ti"), "try_number", None)}
        try:
            if self._attach(client, context):
                return result
            in_flight = self._in_flight(client)
            if in_flight >= self.launch["max_concurrent_tuning_jobs"]:
                self._wait(context, f"{in_flight} of this study's tuning jobs are in flight (limit "
                           f"{self.launch['max_concurrent_tuning_jobs']})", "quota", waits, waiting_since)
            client.create_hyper_parameter_tuning_job(**self._request(context))
        except Exception as error:
            code = error_code(error)
            if code == RESOURCE_IN_USE and self._attach(client, context):
                return result
            if code == RESOURCE_LIMIT_EXCEEDED or code in THROTTLING_CODES:
                self._wait(context, f"the service answered {code}: {error}",
                           "quota" if code == RESOURCE_LIMIT_EXCEEDED else "throttled", waits, waiting_since)
            raise
        waited = f" after {waits} waits ({waited_seconds:.0f} s)" if waits else ""
        context["launch_status"] = f"launched{waited}"
        self.log.info("launched %s for %s%s; waited %.0f s in all for quota or throttling", self.job_name,
                      self.launch["model_id"], waited, waited_seconds)
        return result

    def _request(self, context: Any) -> dict[str, Any]:
        tags = {
            "model-selection:dag-id": context["dag"].dag_id,
            "model-selection:run-id": context["run_id"],
            "model-selection:model-id": self.launch["model_id"],
        }
        return build_tuning_request(self.job_name, **self.launch["spec"], tags=tags)

    def _attach(self, client: Any, context: Any) -> bool:
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
        status = description["HyperParameterTuningJobStatus"]
        context["launch_status"] = f"attached to the existing job ({status})"
        self.log.info("%s already exists (%s): attaching instead of launching again", self.job_name, status)
        return True

    def _in_flight(self, client: Any) -> int:
        """This study's tuning jobs in progress: one filtered listing, not a scan of all jobs."""
        answer = client.list_hyper_parameter_tuning_jobs(
            StatusEquals="InProgress", NameContains=self.launch["study_prefix"], MaxResults=100
        )
        return len(answer["HyperParameterTuningJobSummaries"])

    def _wait(self, context: Any, why: str, kind: str, waits: int, waiting_since: float | None) -> None:
        """Defer and come back to `execute`; the time waited is measured from the first wait."""
        delay = min(self.wait_seconds * 2**waits, self.max_wait_seconds)
        waiting_since = waiting_since or time.time()
        waited_seconds = time.time() - waiting_since
        context["launch_status"] = f"waiting ({kind}): wait {waits + 1}, {waited_seconds:.0f} s so far"
        self.log.warning("not launching %s yet: %s; trying again in %.0f s (wait %d, %.0f s so far)",
                         self.job_name, why, delay, waits + 1, waited_seconds)
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        self.defer(
            trigger=TimeDeltaTrigger(dt.timedelta(seconds=delay)),
            method_name="execute",
            kwargs={"waits": waits + 1, "waiting_since": waiting_since},
        )
