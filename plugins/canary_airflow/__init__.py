"""The thin Airflow layer of canary-rollouts: hooks, operators, sensors, triggers and the DAG factory."""
