"""Registers the model-selection page with Airflow: a FastAPI app on the API server and its views.

The page itself lives in `model_selection.ui`; this file stays small because every Airflow
component loads plugins, and only the API server serves the app.

Three external views: the menu entry (Browse → Model selection), a tab on the DAG's page and a
tab on each of its runs (the run's lanes, live). Airflow's UI fills `{DAG_ID}` and `{RUN_ID}` into
the hrefs of `dag` and `dag_run` views and shows them on every DAG: it has no per-DAG filter, so
the page answers other DAGs with a note that it is for this one.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from model_selection.links import LINKS
from model_selection.ui import DAG_ROUTE, NAV_ROUTE, RUN_ROUTE, URL_PREFIX, create_app


class ModelSelectionPlugin(AirflowPlugin):
    name = "model_selection"
    operator_extra_links = list(LINKS)  # so the UI can rebuild the lane tasks' console links
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Model selection"}]
    external_views = [
        {"name": "Model selection", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": NAV_ROUTE,
         "category": "browse"},
        {"name": "Model selection", "href": f"{URL_PREFIX}/?dag_id={{DAG_ID}}", "destination": "dag",
         "url_route": DAG_ROUTE},
        {"name": "Model selection lanes", "href": f"{URL_PREFIX}/run?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
         "destination": "dag_run", "url_route": RUN_ROUTE},
    ]
