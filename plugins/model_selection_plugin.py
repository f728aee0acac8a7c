"""Registers the model-selection page with Airflow: a FastAPI app on the API server and a menu entry.

The page itself lives in `model_selection.ui`; this file stays small because every Airflow
component loads plugins, and only the API server serves the app.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from model_selection.ui import URL_PREFIX, create_app


class ModelSelectionPlugin(AirflowPlugin):
    name = "model_selection"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Model selection"}]
    external_views = [
        {"name": "Model selection", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "model-selection",
         "category": "browse"},
        {"name": "Model selection", "href": f"{URL_PREFIX}/", "destination": "dag", "url_route": "model-selection-dag"},
    ]
