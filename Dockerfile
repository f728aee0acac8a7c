# The Airflow image of the docker-compose deployment (docker-compose.yaml builds it).
# Only what a worker needs to drive SageMaker: requirements.txt, no PyTorch (SageMaker trains;
# requirements-local.txt, the local training stack, is not installed here).
# The project's folders (dags, plugins, include) are mounted by docker-compose.yaml, not copied.
FROM apache/airflow:3.3.2-python3.11

# The way the Airflow docs extend the image: pin apache-airflow to the image's own version
# (AIRFLOW_VERSION is set by the base image) so pip cannot up- or downgrade it.
COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt
