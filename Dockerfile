# One image for every service of docker-compose.yaml: Airflow components and the embedded stack.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=0 PIP_DISABLE_PIP_VERSION_CHECK=1 AIRFLOW_HOME=/opt/airflow
WORKDIR /opt/canary
COPY requirements.txt pyproject.toml README.md ./
RUN pip install --no-cache-dir uv && uv pip install --system --no-cache -r requirements.txt
COPY plugins ./plugins
COPY dags ./dags
COPY include ./include
RUN uv pip install --system --no-deps -e . && python -m compileall -q /usr/local/lib/python3.11
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/canary/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/canary/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=True
