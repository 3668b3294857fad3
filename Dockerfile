# The project on the official Airflow image: the pinned requirements, then the project's wheel (the core, the
# Airflow integration with the `mparticle` connection type, the backfill console plugin), then the DAG files.
# Nothing else of the repository goes into the image: no plugins/ (the console registers by the wheel's entry
# point), no tools/ or tests/.
#
#   docker build -t mparticle-quarantine-backfill .
#
# Not built on the machines this project is developed on (they have no container runtime):
# tests/airflow/test_deployment.py does the same steps in a new virtualenv and runs the DAG there.
#
# The -python3.11 image: requirements.txt is resolved for Python 3.11 (`uv pip compile --python-version 3.11`);
# on another Python, resolve it again for that version first. The tag's Airflow version must be the one
# requirements.txt pins (the install below fails otherwise).
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

# Stage 1: the wheel, built from pyproject.toml and include/ only.
FROM ${AIRFLOW_IMAGE} AS wheel
RUN mkdir -p /home/airflow/project
COPY --chown=airflow:root pyproject.toml /home/airflow/project/
COPY --chown=airflow:root include/ /home/airflow/project/include/
RUN uv build --wheel --out-dir /home/airflow/dist /home/airflow/project

# Stage 2: the image.
FROM ${AIRFLOW_IMAGE}
# The pinned, resolved set, with the image's own Airflow version named so that nothing can move it.
COPY requirements.txt /requirements.txt
RUN uv pip install --no-cache "apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt
# The project's wheel, without dependencies: requirements.txt holds them all, pinned.
COPY --from=wheel /home/airflow/dist/ /tmp/dist/
RUN uv pip install --no-cache --no-deps /tmp/dist/*.whl
# The DAG files (and mparticle_backfills.yaml, if you keep one beside them).
COPY --chown=airflow:root dags/ /opt/airflow/dags/
