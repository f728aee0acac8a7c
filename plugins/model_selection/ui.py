"""The model-selection page of the Airflow UI: a FastAPI app the API server mounts at /model-selection.

It reads the results store (`MODEL_SELECTION_RESULTS_URI`, else `$AIRFLOW_HOME/model-selection-results`)
and shows, per data set, the report of its latest configuration, made from the same inputs as the
DAG's report.html (`model_selection.report.inputs`: measurement pass, screen, the study's objectives
and constraints): frontier table and plot, every model with failures and their reasons, and links
to the DAG run and mapped task instances that produced each row. `/run?dag_id=...&run_id=...` is the live view of one DAG run (a tab on each run
in Airflow's UI): each model's lane, from the metadata database and the tuning jobs themselves
(`model_selection.lanes`). Every route needs read access to the model-selection DAG, checked by
Airflow's own auth manager, so a request without a valid session cookie or bearer token gets a 401
and no data.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

DAG_ID = "image_classification_model_selection"
URL_PREFIX = "/model-selection"
# The plugin's `url_route`s: Airflow's UI serves the views at /plugin/<route> (the menu entry) and
# /dags/<dag>/plugin/<route>, /dags/<dag>/runs/<run>/plugin/<route> (the DAG and DAG-run tabs).
NAV_ROUTE, DAG_ROUTE, RUN_ROUTE = "model-selection", "model-selection-dag", "model-selection-run"
RESULTS_CONN_ID_VARIABLE = "MODEL_SELECTION_AWS_CONN_ID"


class UILinks:
    """Addresses in the Airflow UI, under whatever root path the API server is served from."""

    def __init__(self, airflow_root: str):
        self.root = airflow_root.rstrip("/")

    def dag(self, dag_id: str) -> str:
        return f"{self.root}/dags/{quote(dag_id, safe='')}"

    def dag_run(self, dag_id: str, run_id: str) -> str:
        return f"{self.dag(dag_id)}/runs/{quote(run_id, safe='')}"

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        return f"{self.dag_run(dag_id, run_id)}/tasks/{quote(task_id, safe='')}/mapped/{int(map_index)}"

    def run_view(self, dag_id: str, run_id: str) -> str:
        """The run's live view, as the DAG run's tab in the Airflow UI."""
        return f"{self.dag_run(dag_id, run_id)}/plugin/{RUN_ROUTE}"

    def results_page(self, dataset: str, config_hash: str) -> str:
        """This page for one data set and configuration, inside the Airflow UI's menu entry.

        The UI loads `/plugin/<route>/<path>` into its frame as `/<path>`, under the root path.
        """
        return (f"{self.root}/plugin/{NAV_ROUTE}{self.root}{URL_PREFIX}/"
                + _query(dataset=dataset, config_hash=config_hash))


def _links(request: Request) -> UILinks:
    return UILinks(request.scope.get("root_path", "").removesuffix(URL_PREFIX))


def _store():
    from model_selection.results import ResultsStore

    return ResultsStore(conn_id=os.environ.get(RESULTS_CONN_ID_VARIABLE, "aws_default"))


def latest_configuration(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The configuration hash of the data set's most recent row: what its latest run studied."""
    newest = max(rows, key=lambda row: str(row.get("finished_at", "")), default=None)
    return None if newest is None else str(newest.get("config_hash"))


def _query(**parameters: str) -> str:
    return "?" + urlencode(parameters)


def navigation(rows_by_dataset: Mapping[str, Sequence[Mapping[str, Any]]], dataset: str, config_hash: str,
               links: UILinks) -> dict[str, Any]:
    """Data sets and this data set's configurations, as the `nav` of templates/ui_page.html.

    The current choice is plain text, the others `Link`s (hrefs only from `UILinks` or `?query`
    strings built here); the template escapes every name.
    """
    from model_selection.report import Link

    runs = [row for row in rows_by_dataset[dataset] if str(row.get("config_hash")) == config_hash
            and row.get("dag_id") == DAG_ID and row.get("dag_run_id")]
    latest_run = max(runs, key=lambda row: str(row.get("finished_at", "")), default=None)
    return {
        "dataset": dataset,
        "datasets": [name if name == dataset else Link(name, _query(dataset=name)) for name in sorted(rows_by_dataset)],
        "configurations": [
            value if value == config_hash else Link(value, _query(dataset=dataset, config_hash=value))
            for value in sorted({str(row.get("config_hash")) for row in rows_by_dataset[dataset]})
        ],
        "dag": Link(f"Run the study ({DAG_ID})", links.dag(DAG_ID)),
        "live": None if latest_run is None else Link(
            f"Lanes of its latest run ({latest_run['dag_run_id']})", links.run_view(DAG_ID, str(latest_run["dag_run_id"]))),
    }


# Airflow embeds the page in an iframe sandboxed without `allow-top-navigation`; this script, shared
# with the results page's template, follows `target=_top` links from the top document.
FOLLOW_LINKS_IN_AIRFLOW = (Path(__file__).parent / "report" / "templates" / "follow_links.html").read_text()


def create_app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import requires_access_dag

    app = FastAPI(
        title="Model selection",
        description="Per data set: the Pareto frontier of the models a study trained, and how each ran.",
        dependencies=[Depends(requires_access_dag("GET", param_dag_id=DAG_ID))],
    )

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, dataset: str | None = None, config_hash: str | None = None,
             dag_id: str | None = None) -> HTMLResponse:
        from model_selection.lanes import other_dag_page
        from model_selection.report import render_html
        from model_selection.report.inputs import read_report_inputs

        if dag_id is not None and dag_id != DAG_ID:  # the DAG tab, which Airflow shows on every DAG
            return HTMLResponse(other_dag_page(dag_id, DAG_ID))
        links = _links(request)
        store = _store()
        rows_by_dataset: dict[str, list[dict[str, Any]]] = {}
        for row in store.read_latest():
            rows_by_dataset.setdefault(str(row.get("dataset")), []).append(row)
        if not rows_by_dataset:
            return HTMLResponse(
                "<!DOCTYPE html><html><body><h1>Model selection</h1><p>No results yet. Trigger "
                f'<a href="{html.escape(links.dag(DAG_ID))}" target="_top">{html.escape(DAG_ID)}</a>; '
                "each run adds its models here.</p></body></html>")
        if dataset not in rows_by_dataset:
            dataset = max(rows_by_dataset, key=lambda name: max(str(row.get("finished_at", "")) for row in rows_by_dataset[name]))
        config_hash = config_hash or latest_configuration(rows_by_dataset[dataset])
        rows = [row for row in rows_by_dataset[dataset] if str(row.get("config_hash")) == config_hash]
        # As the DAG's report task does: the measurement pass's figures, the study's objectives, constraints
        # and local rate (its `report` record), the screen's ranking; so page and report.html agree.
        inputs = read_report_inputs(store, dataset, config_hash or "", rows=rows)
        return HTMLResponse(render_html(
            inputs.rows,
            plot_src="plot.png" + _query(dataset=dataset, config_hash=config_hash or ""),
            settings={"results store": store.uri, "data set": dataset, "configuration hash": config_hash},
            title=f"Model selection: {dataset}",
            links=links,
            template="ui_page.html",
            nav=navigation(rows_by_dataset, dataset, config_hash or "", links),
            **inputs.options(),
        ))

    @app.get("/run", response_class=HTMLResponse)
    def run_view(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        """Each model's lane in one run, live: launch waits, job progress, how it ended, links."""
        import time

        from model_selection.lanes import (
            describe_with_hooks,
            lanes,
            missing_run_page,
            other_dag_page,
            read_run,
            render_run_page,
        )

        if dag_id != DAG_ID:  # the DAG-run tab, which Airflow shows on every DAG's runs
            return HTMLResponse(other_dag_page(dag_id, DAG_ID))
        run = read_run(dag_id, run_id)
        if run is None:
            return HTMLResponse(missing_run_page(dag_id, run_id), status_code=404)
        return HTMLResponse(render_run_page(run, lanes(run, describe_with_hooks(run), time.time()), _links(request),
                                            script=FOLLOW_LINKS_IN_AIRFLOW))

    @app.get("/plot.png", response_class=Response)
    def plot(dataset: str, config_hash: str) -> Response:
        from model_selection.report import flag_rows, write_plot
        from model_selection.report.inputs import read_report_inputs

        inputs = read_report_inputs(_store(), dataset, config_hash)
        _, candidates, _ = flag_rows(inputs.rows, inputs.objectives)
        png = io.BytesIO()
        write_plot(candidates, inputs.objectives, png, f"Model selection: {dataset}")
        return Response(png.getvalue(), media_type="image/png")

    return app
