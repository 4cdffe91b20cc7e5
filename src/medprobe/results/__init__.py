"""Results database: SQLite rows per complete run, metrics with CIs, per-case prediction files."""

from medprobe.results.db import (
    SCHEMA_VERSION,
    SPLITS,
    TASK_TYPES,
    ResultsDB,
    collect_environment,
    default_results_path,
    resolve_db_path,
)
from medprobe.results.frame import load

__all__ = ["SCHEMA_VERSION", "SPLITS", "TASK_TYPES", "ResultsDB", "collect_environment", "default_results_path",
           "load", "resolve_db_path"]
