"""Fixtures shared by several test directories (defined here so session scope means one instance)."""
from tests.mlflow_server import mlflow_server  # noqa: F401  (a real `mlflow server` on loopback)
