"""Which image classifier should you fine-tune and deploy for your data set?

Plan the study, optionally screen the candidates cheaply (one job, launched and waited for like the
lanes' jobs), then in one lane per model launch
a tuning job and wait for it, collect every model's metrics, time the trained models side
by side (local backend), and report the accuracy/throughput Pareto frontier.
Only light imports here: the DAG processor parses this file often.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import Asset, Param, XComArg, dag, get_current_context, task, task_group

from model_selection.operators import ScreenJobLaunchOperator, TuningJobLaunchOperator
from model_selection.sensors import ScreenJobSensor, TuningJobSensor

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Created from include/airflow/pools.json by `make airflow`, the compose init and the tests.
LAUNCH_POOL = "model_selection_launch"
REPORT_ASSET = Asset(name="model_selection_report", uri="file:///model-selection/report")

PARAMS = {
    "backend": Param("local", enum=["local", "sagemaker"], description="Where the tuning jobs run."),
    "model_ids": Param(
        ["resnet10t", "regnetx_002", "lcnet_050", "mobilenetv3_small_100", "resnet18"],
        type="array", items={"type": "string"},
        description="Model ids: timm names for the local backend, JumpStart ids for SageMaker. "
                    "Ignored when model_list names a list.",
    ),
    "model_list": Param(None, type=["null", "string"],
                        description="Replaces model_ids with the models of include/model_lists/NAME.txt "
                                    "(for example local-small, or jumpstart-caltech256-frontier for SageMaker)."),
    "dataset": Param(
        {"name": "digits", "training": "include/datasets/digits/training",
         "validation": "include/datasets/digits/validation", "test": "include/datasets/digits/test"},
        type="object",
        description="name, training and optional validation and test: folders (local; relative to the project) "
                    "or s3:// prefixes (SageMaker), one sub-folder per class.",
    ),
    "hyperparameters": Param({}, type="object",
                             description="Overrides of the algorithm's defaults for every backend, as strings "
                                         "(JumpStart names, checked against each model's own)."),
    "local_hyperparameters": Param(
        {"pretrained": "auto", "image_size": "auto"}, type="object",
        description="Only for the local backend (never sent to SageMaker): the local trainer's settings, under "
                    "hyperparameters. pretrained auto: the hub, else weights_dir / MODEL_SELECTION_WEIGHTS_DIR, else "
                    "random init (warned); train_only_top_layer then follows (True with pretrained weights). "
                    "image_size auto: the pretrained weights' own input size (a JumpStart id's from its map), "
                    "32 px from random weights; a number sets it for every model.",
    ),
    "allow_approximate_twins": Param(
        False, type="boolean",
        description="Local backend: also run JumpStart ids whose timm twin is only approximate (same architecture, but "
                    "another resolution, pretraining data or weights; include/model_maps). Off: such an id given in "
                    "model_ids is a plan problem, and a model_list leaves it out with a warning. Rows say each twin's "
                    "kind (twin_kind)."),
    "screen": Param(None, type=["null", "object"],
                    description='Score every candidate cheaply first, in one job, and fine-tune only the best, e.g. '
                                '{"keep_top": 5, "score": "knn"} (score: knn, linear, logme or combined; '
                                'sample_per_class: images per class scored, default 10, null for all; seed; '
                                'instance_type: the SageMaker screen job\'s, default ml.g4dn.xlarge; unscored: '
                                'fine_tune or leave_out, for JumpStart ids without an exact timm twin). '
                                'Empty: every model is fine-tuned.'),
    "speed_rounds": Param(7, type="integer", minimum=0,
                          description="Local backend: after training, every trained model is timed side by side in this "
                                      "many interleaved rounds; the frontier uses those figures (0: each job's own)."),
    "learning_rate_multipliers": Param([1.0, 0.2], type="array", items={"type": "number"},
                                       description="Learning rates tried: the default times each of these."),
    "epochs": Param(10, type="integer", minimum=1, description="Epochs per training job (early stopping may end sooner)."),
    "early_stopping_patience": Param(3, type="integer", minimum=1, description="Epochs without improvement before stopping."),
    "instance_type": Param("ml.g4dn.xlarge", type="string", description="SageMaker training instance type."),
    "max_concurrent_tuning_jobs": Param(10, type="integer", minimum=1,
                                        description="At most this many of this study's tuning jobs in flight."),
    "max_capacity_wait_hours": Param(24, type="number", exclusiveMinimum=0,
                                     description="A launch waiting for capacity, quota or throttling fails after this long."),
    "results_uri": Param(None, type=["null", "string"], description="Results store: a folder or s3:// URI (empty: the default)."),
    "force": Param(False, type="boolean", description="Re-train models that already have results."),
    "role_arn": Param(None, type=["null", "string"], description="SageMaker execution role (empty: the model_selection_role_arn Variable)."),
    "output_path": Param(None, type=["null", "string"], description="SageMaker s3:// output path for model artifacts."),
    "parallel_training_jobs": Param(
        None, type=["null", "integer"], minimum=1,
        description="Training jobs one tuning job runs at once, 1 to the number of learning rates (empty: all of "
                    "them). Lower it when the account's quota for the instance type is lower; the study takes longer."),
    "volume_size_gb": Param(30, type="integer", minimum=1,
                            description="SageMaker: each training job's storage volume in GB (binds on EBS-only types "
                                        "such as p3; types with local storage such as g4dn use that)."),
    "vpc_subnets": Param([], type="array", items={"type": "string"},
                         description="SageMaker: subnet ids (subnet-...) the training jobs run in; with "
                                     "vpc_security_group_ids. Empty: no VPC."),
    "vpc_security_group_ids": Param([], type="array", items={"type": "string"},
                                    description="SageMaker: security group ids (sg-...) for vpc_subnets."),
    "volume_kms_key_id": Param(None, type=["null", "string"],
                               description="SageMaker: KMS key (id, ARN or alias) that encrypts the training volumes "
                                           "(not for types with local storage such as g4dn)."),
    "output_kms_key_id": Param(None, type=["null", "string"],
                               description="SageMaker: KMS key (id, ARN or alias) that encrypts the model artifacts."),
    "enable_network_isolation": Param(
        False, type="boolean",
        description="SageMaker: training containers make no network calls; the training script then comes as "
                    "the 'code' input channel."),
    "encrypt_inter_container_traffic": Param(False, type="boolean",
                                             description="SageMaker: encrypt traffic between training containers."),
    "managed_spot_training": Param(False, type="boolean",
                                   description="SageMaker: train on spot capacity (cheaper; a job may wait or be "
                                               "interrupted). Checkpoints go under output_path/checkpoints."),
    "spot_max_wait_hours": Param(None, type=["null", "number"], minimum=24,
                                 description="Managed spot: how long a training job may take in all, waiting "
                                             "included; at least its 24-hour run limit (empty: 48)."),
    "tolerate_deprecated_or_vulnerable_models": Param(
        False, type="boolean",
        description="SageMaker: also train JumpStart models the catalogue marks deprecated or vulnerable (the plan "
                    "log names each). Off: such a model is a plan problem."),
    "aws_conn_id": Param("aws_default", type="string", description="Airflow AWS connection for SageMaker."),
    "region_name": Param(None, type=["null", "string"], description="AWS region (empty: the connection's)."),
    "objectives": Param(["test_accuracy:max", "test_throughput:max"], type="array", items={"type": "string"},
                        description="The frontier's objectives, metric:max or metric:min; the first decides the "
                                    "recommendation (any row metric, cost_usd included)."),
    "constraints": Param([], type="array", items={"type": "string"},
                         description="What the recommended model must meet, e.g. test_throughput>=100, "
                                     "num_params<=10e6, cost_usd<=5."),
    "local_usd_per_hour": Param(None, type=["null", "number"], minimum=0,
                                description="What an hour of this machine costs, for the local backend's cost_usd "
                                            "(SageMaker uses include/prices)."),
}


@dag(
    dag_id="image_classification_model_selection",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    tags=["model-selection", "sagemaker", "image-classification"],
    default_args={
        "retries": 2,
        "retry_delay": dt.timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=10),
    },
    doc_md=__doc__,
)
def image_classification_model_selection():
    @task
    def plan() -> list:
        """Returns one launch per model to train; pushes the study's settings and hook parameters as XComs too."""
        from model_selection.dag_tasks import plan_task

        context = get_current_context()
        planned = plan_task(context["params"], PROJECT_ROOT)
        context["ti"].xcom_push(key="study", value=planned["study"])
        context["ti"].xcom_push(key="hook_params", value=planned["hook_params"])
        context["ti"].xcom_push(key="screen_job", value=planned["screen_job"])
        return planned["launches"]

    @task(trigger_rule="none_failed")  # runs when the screen's job was skipped (no screen asked)
    def screen(launches: list, waited: dict | None) -> list:
        """The launches to fine-tune: all of them, or the best-scoring `keep_top` by the screen job's scores."""
        from model_selection.dag_tasks import screen_task

        context = get_current_context()
        return screen_task(context["ti"], launches, waited, context["run_id"])

    @task_group(group_id="lane")
    def lane(launch: dict) -> None:
        """One model: its wait starts when its own launch returns, and its failure touches no other lane."""
        # Map indexes name each model and say how it stands: the operators set the status in the context.
        launched = TuningJobLaunchOperator(
            task_id="launch", launch=launch, pool=LAUNCH_POOL,
            map_index_template="{{ task.launch['model_id'] }} · attempt {{ task.launch['attempt'] }}"
                               "{% if launch_status is defined %} · {{ launch_status }}{% endif %}",
        )
        TuningJobSensor(
            task_id="wait", job=launched.output,
            map_index_template="{{ task.job['model_id'] }} · {{ task.job['job_name'] }}"
                               "{% if job_status is defined %} · {{ job_status }}{% endif %}",
        )

    @task(trigger_rule="all_done")  # after every lane, failed or not
    def collect_metrics() -> dict:
        from model_selection.dag_tasks import collect_task

        context = get_current_context()
        return collect_task(context["ti"], context["run_id"])

    @task
    def measure_speed(study: dict, collected: dict) -> dict:
        """Local backend: every trained model of the study timed in one process, side by side."""
        from model_selection.dag_tasks import measure_speed_task

        return measure_speed_task(study, get_current_context()["run_id"])

    @task(outlets=[REPORT_ASSET])
    def frontier_report(study: dict, collected: dict, speed: dict) -> str:
        from model_selection.dag_tasks import report_task

        report = report_task(study)
        get_current_context()["outlet_events"][REPORT_ASSET].extra = report
        return report["report"]

    planned = plan()
    study = XComArg(planned.operator, key="study")
    screen_launch = ScreenJobLaunchOperator(task_id="screen_launch", launch=XComArg(planned.operator, key="screen_job"),
                                            pool=LAUNCH_POOL)
    screen_wait = ScreenJobSensor(task_id="screen_wait", job=screen_launch.output)
    launches = screen(planned, screen_wait.output)
    lanes = lane.expand(launch=launches)
    collected = collect_metrics()
    [launches, lanes] >> collected
    frontier_report(study, collected, measure_speed(study, collected))


image_classification_model_selection()
