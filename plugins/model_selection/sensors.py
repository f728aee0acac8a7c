"""The sensors that wait for a job, deferrable by default: one model's tuning job, the screen's training job."""

from __future__ import annotations

import datetime as dt
import time
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
)

from model_selection.job_kinds import TRAINING, TUNING, JobKind
from model_selection.job_status import FAILED, RUNNING, STOPPED, SUCCESS
from model_selection.links import LINKS, persist_console_links

DEFAULT_TIMEOUT = dt.timedelta(days=7)
# How often a wait checks its job when the DAG does not say: a local job is a state file on this machine,
# cheap to read, and a 2-epoch job ends in seconds; SageMaker's Describe calls share the account's API rate.
DEFAULT_POLL_SECONDS = {"local": 5.0, "sagemaker": 30.0}


class TuningJobSensor(BaseSensorOperator):
    """Succeeds when the tuning job is Completed; fails with the job's reason when Failed or Stopped.

    `job` is what the launch operator returned: `{"job_name", "model_id", "hook_params", ...}`.
    Returns `{"job_name", "job_status", "throttled_describes", "wait_try_number"}`, and sets
    `job_status` in the context for the DAG's `map_index_template`.
    Deferrable (the default) waits in the triggerer with no worker slot; otherwise it pokes
    (or reschedules). Unless `stop_on_kill=False`, the job is stopped whenever the wait ends
    without it: the timeout passing (in either mode), the task killed while poking, or a
    user killing the deferred task (the trigger's `on_kill`).
    Without a `poke_interval` (given, or set later, as a cluster policy sets it) it polls at its backend's
    `DEFAULT_POLL_SECONDS`.
    """

    template_fields = ("job",)  # resolves the launch's XCom inside a mapped task group
    operator_extra_links = LINKS
    kind: JobKind = TUNING

    def __init__(self, *, job: dict[str, Any], deferrable: bool = True, stop_on_kill: bool = True,
                 poke_interval: float | None = None, timeout: dt.timedelta | float = DEFAULT_TIMEOUT, **kwargs: Any):
        super().__init__(poke_interval=DEFAULT_POLL_SECONDS["sagemaker"] if poke_interval is None else poke_interval,
                         timeout=timeout, **kwargs)
        # else the backend's default, once `job` is resolved (`resolve_poke_interval`)
        self.unset_poke_interval = None if poke_interval is not None else self.poke_interval
        self.job = job
        self.deferrable = deferrable
        self.stop_on_kill = stop_on_kill
        self.throttled_describes = 0  # in poke mode; the trigger counts its own

    @property
    def job_name(self) -> str:
        return self.job["job_name"]

    @cached_property
    def hook(self) -> Any:
        from model_selection.hooks import tuning_job_hook

        return tuning_job_hook(self.job["hook_params"])

    @property
    def timeout_seconds(self) -> float:
        return self.timeout.total_seconds() if isinstance(self.timeout, dt.timedelta) else float(self.timeout)

    def resolve_poke_interval(self) -> float:
        """The interval nobody set becomes the job's backend's default; one that was set stays."""
        if self.poke_interval == self.unset_poke_interval:
            self.poke_interval = DEFAULT_POLL_SECONDS.get(self.job["hook_params"].get("backend"), self.poke_interval)
        return self.poke_interval

    def execute(self, context: Any) -> Any:
        self.resolve_poke_interval()
        if not self.deferrable:
            try:
                super().execute(context)
            except AirflowSensorTimeout:
                self._stop_job()
                raise
            return self._finished(context, "Completed", self.throttled_describes)
        from model_selection.triggers import TuningJobTrigger

        self.log.info("waiting for %s (model %s) in the triggerer", self.job_name, self.job["model_id"])
        self.defer(
            trigger=TuningJobTrigger(self.job_name, self.job["hook_params"], float(self.poke_interval),
                                     time.time() + self.timeout_seconds, stop_on_kill=self.stop_on_kill,
                                     kind=self.kind.name),
            method_name="execute_complete",
            # Airflow's own bound, a little after the trigger's deadline, for a trigger that never answers.
            timeout=dt.timedelta(seconds=self.timeout_seconds + 4 * float(self.poke_interval)),
        )

    def poke(self, context: Any) -> bool:
        from model_selection.hooks import Throttled

        try:
            description = self.kind.describe(self.hook, self.job_name)
        except Throttled:
            self.throttled_describes += 1
            self.log.warning("describe of %s throttled (%d so far); trying again at the next poke", self.job_name,
                             self.throttled_describes)
            return False
        if description is None:
            raise AirflowFailException(f"no {self.kind.noun} named {self.job_name}")
        outcome, reason = self.kind.outcome(description)
        self.log.info(self.kind.progress(description))
        context["job_status"] = description[self.kind.status_key]
        if outcome != RUNNING and self.kind.console_links:
            persist_console_links(context, self, self.hook, self.job_name,
                                  (description.get("BestTrainingJob") or {}).get("TrainingJobName"))
        if outcome in (FAILED, STOPPED):
            raise AirflowFailException(reason)  # the job's end is final: retrying the wait cannot change it
        return outcome == SUCCESS

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """Every timeout of a deferred wait ends here: the trigger's deadline (its event) and Airflow's own
        deferral timeout (which fails the task without the trigger). Either way the job is stopped."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout:  # the base sensor's translation of Airflow's TaskDeferralTimeout
            self._stop_job()
            raise

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("throttled"):
            self.log.warning("%s: %d describe calls were throttled while waiting", self.job_name, event["throttled"])
        context["job_status"] = event.get("job_status") or event["outcome"]
        if self.kind.console_links:
            persist_console_links(context, self, self.hook, self.job_name, event.get("best_training_job"))
        if event["outcome"] == SUCCESS:
            return self._finished(context, event["job_status"], event.get("throttled", 0))
        if event["outcome"] == "timeout":
            raise AirflowSensorTimeout(event["reason"])  # resume_execution stops the job
        if event["outcome"] in (FAILED, STOPPED):
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
            stopped = self.kind.stop(self.hook, self.job_name)
            self.log.info("%s %s", self.job_name, "asked to stop" if stopped else "had ended already")
        except Exception as error:  # noqa: BLE001 - stopping is best effort; the wait's own error matters more
            self.log.warning("could not stop %s: %s", self.job_name, error)


class ScreenJobSensor(TuningJobSensor):
    """Waits for the screen's one training job, as `TuningJobSensor` waits for a model's tuning job.

    `job` is what `ScreenJobLaunchOperator` returned. The lane's console links (tuning job, best training
    job) do not apply, so it shows none.
    """

    operator_extra_links = ()
    kind = TRAINING
