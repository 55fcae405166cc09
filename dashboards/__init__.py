"""Results people can look at: the study report (HTML), the Parquet export, and MLflow access."""
