"""Extra links on the lane's task instances: the tuning job, the best training job and its logs in the AWS console.

They follow the Amazon provider's `BaseAwsLink`: the task stores the link's parts in an XCom
(`persist`), and the UI formats them; a task on the local backend stores none, so no link shows.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink


class TuningJobConsoleLink(BaseAwsLink):
    name = "SageMaker tuning job"
    key = "model_selection_tuning_job"
    format_str = BASE_AWS_CONSOLE_LINK + "/sagemaker/home?region={region_name}#/hyper-tuning-jobs/{job_name}"


class BestTrainingJobConsoleLink(BaseAwsLink):
    name = "SageMaker best training job"
    key = "model_selection_best_training_job"
    format_str = BASE_AWS_CONSOLE_LINK + "/sagemaker/home?region={region_name}#/jobs/{job_name}"


class TrainingLogsConsoleLink(BaseAwsLink):
    name = "Training logs (CloudWatch)"
    key = "model_selection_training_logs"
    # The console's own escaping of "/aws/sagemaker/TrainingJobs" and "?logStreamNameFilter=" in its fragment.
    format_str = (BASE_AWS_CONSOLE_LINK + "/cloudwatch/home?region={region_name}#logsV2:log-groups/log-group/"
                  "$252Faws$252Fsagemaker$252FTrainingJobs$3FlogStreamNameFilter$3D{job_name}")


LINKS = (TuningJobConsoleLink(), BestTrainingJobConsoleLink(), TrainingLogsConsoleLink())


def persist_console_links(context: Any, operator: Any, hook: Any, tuning_job: str,
                          best_training_job: str | None = None) -> None:
    """Store the links' parts for this task instance; nothing on the local backend (no console)."""
    where = hook.console_location()
    if where is None:
        return
    region, partition = where
    TuningJobConsoleLink.persist(context, operator, region, partition, job_name=tuning_job)
    if best_training_job:
        BestTrainingJobConsoleLink.persist(context, operator, region, partition, job_name=best_training_job)
        TrainingLogsConsoleLink.persist(context, operator, region, partition, job_name=best_training_job)
