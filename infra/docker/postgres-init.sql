-- The databases beside Prefect's (POSTGRES_DB): MLflow's tracking/registry store and its auth store.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
