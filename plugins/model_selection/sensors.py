"""The sensor that waits for one model's tuning job, deferrable by default."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from model_selection.backends.api import THROTTLING_CODES, error_code
from model_selection.job_status import FAILED, STOPPED, SUCCESS, progress, tuning_job_outcome

DEFAULT_TIMEOUT = dt.timedelta(days=7)


class TuningJobSensor(BaseSensorOperator):
    """Succeeds when the tuning job is Completed; fails with the job's reason when Failed or Stopped.

    `job` is what the launch operator returned: `{"job_name", "model_id", "client", ...}`.
    Returns `{"job_name", "job_status", "throttled_describes", "wait_try_number"}`, and sets `job_status` in the
    context for the DAG's `map_index_template`, so the grid shows each model's end.
    Deferrable (the default) waits in the triggerer with no worker slot; otherwise it
    pokes (or reschedules). The timeout is generous and configurable; when it passes, or
    the task is killed while poking, the job is stopped too unless `stop_on_kill=False`.
    """

    def __init__(self, *, job: dict[str, Any], deferrable: bool = True, stop_on_kill: bool = True,
                 poke_interval: float = 30, timeout: dt.timedelta | float = DEFAULT_TIMEOUT, **kwargs: Any):
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.job = job
        self.deferrable = deferrable
        self.stop_on_kill = stop_on_kill
        self.throttled_describes = 0  # in poke mode; the trigger counts its own

    @property
    def job_name(self) -> str:
        return self.job["job_name"]

    def _client(self) -> Any:
        from model_selection.backends import get_client

        return get_client(**self.job["client"])

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            super().execute(context)
            return self._finished(context, "Completed", self.throttled_describes)
        from model_selection.triggers import TuningJobTrigger

        timeout = self.timeout.total_seconds() if isinstance(self.timeout, dt.timedelta) else float(self.timeout)
        self.log.info("waiting for %s (model %s) in the triggerer", self.job_name, self.job["model_id"])
        self.defer(
            trigger=TuningJobTrigger(self.job_name, self.job["client"], float(self.poke_interval), time.time() + timeout),
            method_name="execute_complete",
        )

    def poke(self, context: Any) -> bool:
        try:
            description = self._client().describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.job_name)
        except Exception as error:
            if error_code(error) in THROTTLING_CODES:
                self.throttled_describes += 1
                self.log.warning("describe of %s throttled (%d so far); trying again at the next poke", self.job_name,
                                 self.throttled_describes)
                return False
            raise
        outcome, reason = tuning_job_outcome(description)
        self.log.info(progress(description))
        context["job_status"] = description["HyperParameterTuningJobStatus"]
        if outcome in (FAILED, STOPPED):
            raise AirflowFailException(reason)  # the job's end is final: retrying the wait cannot change it
        return outcome == SUCCESS

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("throttled"):
            self.log.warning("%s: %d describe calls were throttled while waiting", self.job_name, event["throttled"])
        context["job_status"] = event.get("job_status") or event["status"]
        if event["status"] == SUCCESS:
            return self._finished(context, event["job_status"], event.get("throttled", 0))
        if event["status"] == "timeout":
            self._stop_job()
            raise AirflowSensorTimeout(event["reason"])
        if event["status"] in (FAILED, STOPPED):
            raise AirflowFailException(event["reason"])
        raise AirflowException(event["reason"])

    def _finished(self, context: Any, job_status: str, throttled: int) -> dict[str, Any]:
        context["job_status"] = job_status + (f", {throttled} describes throttled" if throttled else "")
        self.log.info("%s: %s", self.job_name, context["job_status"])
        return {"job_name": self.job_name, "job_status": job_status, "throttled_describes": throttled,
                "wait_try_number": getattr(context.get("ti"), "try_number", None)}

    def on_kill(self) -> None:
        self._stop_job()

    def _stop_job(self) -> None:
        if not self.stop_on_kill:
            return
        try:
            self._client().stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.job_name)
            self.log.info("asked %s to stop", self.job_name)
        except Exception as error:  # noqa: BLE001 - stopping is best effort; the job may have ended already
            self.log.warning("could not stop %s: %s", self.job_name, error)
