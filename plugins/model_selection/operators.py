"""The operators that launch a job exactly once: one model's tuning job within the study's quota, and the
screen's one training job."""

from __future__ import annotations

import datetime as dt
import time
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from model_selection.links import TuningJobConsoleLink, persist_console_links

DEFAULT_MAX_CAPACITY_WAIT = dt.timedelta(hours=24)


class TuningJobLaunchOperator(BaseOperator):
    """Creates the tuning job `launch` describes, or attaches to the one an earlier try created.

    `launch` is one entry of the plan: `{"model_id", "job_name", "attempt", "spec", "hook_params",
    "study_prefix", "max_concurrent_tuning_jobs", "max_capacity_wait_seconds"}`. The job name
    is derived from the data set, configuration and model, so a retry, a cleared task or a
    re-run finds its job instead of paying for a second one.

    Two kinds of waiting, both deferred (no worker slot held, no model lost):
    - the study has `max_concurrent_tuning_jobs` in flight: re-check every `capacity_check_seconds`,
      so freed capacity is used promptly;
    - the service throttles or answers ResourceLimitExceeded: back off, doubling from
      `wait_seconds` up to `max_wait_seconds`.
    All waiting together is bounded by `max_capacity_wait_seconds` (default 24 h); then the
    launch fails naming the quota and the time waited. A quota below what one job asks for
    fails at once with the service's message.

    Returns `{"job_name", "model_id", "hook_params"}` for the sensor, plus what the launch
    cost: `launch_waits`, `launch_wait_seconds`, `launch_try_number`. How the launch stands
    is set as `launch_status` in the context for the DAG's `map_index_template`.
    """

    template_fields = ("launch",)  # resolves the plan's entry inside a mapped task group
    ui_color = "#e8f3ff"
    operator_extra_links = (TuningJobConsoleLink(),)

    def __init__(self, *, launch: dict[str, Any], wait_seconds: float = 60, max_wait_seconds: float = 900,
                 capacity_check_seconds: float = 60, **kwargs: Any):
        super().__init__(**kwargs)
        self.launch = launch
        self.wait_seconds = wait_seconds
        self.max_wait_seconds = max_wait_seconds
        self.capacity_check_seconds = capacity_check_seconds

    @property
    def job_name(self) -> str:
        return self.launch["job_name"]

    @cached_property
    def hook(self) -> Any:
        from model_selection.hooks import tuning_job_hook

        return tuning_job_hook(self.launch["hook_params"])

    def execute(self, context: Any, event: Any = None, waits: int = 0, waiting_since: float | None = None,
                kind: str | None = None) -> dict[str, Any]:
        """`waits`, `waiting_since` and `kind` (what the last wait was for) come back from a deferral."""
        from model_selection.backends.api import RequestRefused
        from model_selection.hooks import NameTaken, QuotaExceeded, Throttled

        waited_seconds = round(time.time() - waiting_since, 1) if waiting_since else 0.0
        result = {"job_name": self.job_name, "model_id": self.launch["model_id"],
                  "hook_params": self.launch["hook_params"], "launch_waits": waits,
                  "launch_wait_seconds": waited_seconds,
                  "launch_try_number": getattr(context.get("ti"), "try_number", None)}
        request = self._request(context)
        try:
            attached, status = self._create_or_attach(context, request, waits, waiting_since)
        except (NameTaken, RequestRefused) as error:  # retrying cannot free the name or mend the request
            raise AirflowFailException(str(error)) from error
        except QuotaExceeded as error:
            if error.never_fits:
                raise AirflowFailException(f"the account's quota can never fit this job: {error}") from error
            self._wait(context, f"the service answered ResourceLimitExceeded: {error}", "quota", waits, waiting_since)
        except Throttled as error:
            self._wait(context, f"the service throttled the launch: {error}", "throttled", waits, waiting_since)
        if self.operator_extra_links:  # the tuning job's console page; the screen's training job has none here
            persist_console_links(context, self, self.hook, self.job_name)
        if attached:
            context["launch_status"] = f"attached to the existing job ({status})"
            self.log.info("%s already exists (%s): attaching instead of launching again", self.job_name, status)
            return result
        waited = f" after {waits} waits ({waited_seconds:.0f} s)" if waits else ""
        context["launch_status"] = f"launched{waited}"
        self.log.info("launched %s for %s%s", self.job_name, self.launch["model_id"], waited)
        return result

    def _create_or_attach(self, context: Any, request: dict[str, Any], waits: int,
                          waiting_since: float | None) -> tuple[bool, str]:
        """(attached, status); defers while the study has its most tuning jobs in flight."""
        status = self.hook.existing_status(request)
        if status is not None:
            return True, status
        in_flight = self.hook.count_in_flight(self.launch["study_prefix"])
        limit = self.launch["max_concurrent_tuning_jobs"]
        if in_flight >= limit:
            self._wait(context, f"{in_flight} of this study's tuning jobs are in flight (limit {limit})",
                       "capacity", waits, waiting_since)
        return self.hook.create_or_attach(request)

    def _request(self, context: Any) -> dict[str, Any]:
        from model_selection.tuning_request import request_for_launch

        return request_for_launch(self.launch, tags={
            "model-selection:dag-id": context["dag"].dag_id,
            "model-selection:run-id": context["run_id"],
            "model-selection:model-id": self.launch["model_id"],
        })

    def _wait(self, context: Any, why: str, kind: str, waits: int, waiting_since: float | None) -> None:
        """Defer and come back to `execute`; fail once all waiting has lasted longer than allowed."""
        waiting_since = waiting_since or time.time()
        waited_seconds = time.time() - waiting_since
        limit = float(self.launch.get("max_capacity_wait_seconds") or DEFAULT_MAX_CAPACITY_WAIT.total_seconds())
        if waited_seconds >= limit:
            raise AirflowFailException(
                f"gave up launching {self.job_name} after waiting {waited_seconds / 3600:.1f} h "
                f"({waits} waits; the limit is {limit / 3600:.1f} h): {why}"
            )
        if kind == "capacity":
            delay = self.capacity_check_seconds
        else:
            delay = min(self.wait_seconds * 2**waits, self.max_wait_seconds)
        delay = min(delay, limit - waited_seconds)
        context["launch_status"] = f"waiting ({kind}): wait {waits + 1}, {waited_seconds:.0f} s so far"
        self.log.warning("not launching %s yet: %s; trying again in %.0f s (wait %d, %.0f s so far)",
                         self.job_name, why, delay, waits + 1, waited_seconds)
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        self.defer(
            trigger=TimeDeltaTrigger(dt.timedelta(seconds=delay)),
            method_name="execute",
            kwargs={"waits": waits + 1, "waiting_since": waiting_since, "kind": kind},
        )


class ScreenJobLaunchOperator(TuningJobLaunchOperator):
    """Creates the screen's one training job, or attaches to the one an earlier try created; skips when the
    plan made no screen job (`launch` has no request).

    `launch` is the plan's `screen_job` XCom: `{"job_name", "model_id", "hook_params", "request",
    "max_capacity_wait_seconds", ...}`, the request built (and its source archive staged) by the plan. The
    name is derived from the study and the candidates, so a retry finds its job. Throttling and
    ResourceLimitExceeded are waited out as for a tuning job; there is no in-flight cap, it is one job.
    """

    operator_extra_links = ()

    def execute(self, context: Any, event: Any = None, waits: int = 0, waiting_since: float | None = None,
                kind: str | None = None) -> dict[str, Any]:
        if not (self.launch or {}).get("request"):
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("no screen job: the plan asked for no screen, or no candidate can be scored")
        return super().execute(context, event, waits, waiting_since, kind)

    def _create_or_attach(self, context: Any, request: dict[str, Any], waits: int,
                          waiting_since: float | None) -> tuple[bool, str]:
        return self.hook.create_or_attach_training_job(request)

    def _request(self, context: Any) -> dict[str, Any]:
        return self.launch["request"]
