# Image for every Airflow component and the emulator: Airflow 3.3 plus this project's pinned requirements.
# AIRFLOW_IMAGE_NAME picks the Airflow image to build on (docker-compose.yaml passes it through), e.g. a
# mirror, or a stand-in from docker/build-standins.sh where no registry is reachable.
ARG AIRFLOW_IMAGE_NAME=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE_NAME}
COPY requirements.txt constraints.txt /opt/openai-batch/
RUN pip install --no-cache-dir -r /opt/openai-batch/requirements.txt -c /opt/openai-batch/constraints.txt
COPY --chown=airflow:root openai_emulator /opt/openai-batch/openai_emulator
ENV PYTHONPATH=/opt/openai-batch
