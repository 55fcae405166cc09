"""The study as one Parquet table, one row per trial run (schema: docs/EXPORT.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dashboards.data import StudyData

#: Bumped when a column changes meaning or type; readers can check ``ltbias.export_version``.
EXPORT_VERSION = "2"  # 2: column `group`; params only those the method reads; grid columns from the spec
STUDY_COLUMNS = ["study", "experiment_id", "study_run_id"]


def study_table(data: StudyData) -> pd.DataFrame:
    """The trial table with the study's identity in front: study, experiment_id, study_run_id, ..."""
    front = pd.DataFrame({"study": data.study, "experiment_id": data.experiment_id,
                          "study_run_id": data.study_run_id}, index=data.trials.index)
    for column in STUDY_COLUMNS:
        front[column] = front[column].astype("string")
    return pd.concat([front, data.trials], axis=1)


def write_parquet(data: StudyData, out: Path) -> Path:
    """Write ``study_table(data)`` to ``out`` with the study in the file's key-value metadata."""
    table = pa.Table.from_pandas(study_table(data), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.update({
        b"ltbias.export_version": EXPORT_VERSION.encode(),
        b"ltbias.study": data.study.encode(),
        b"ltbias.study_run_id": data.study_run_id.encode(),
        b"ltbias.tracking_uri": data.tracking_uri.encode(),
        b"ltbias.param_columns": json.dumps(data.param_columns).encode(),
        b"ltbias.metric_columns": json.dumps(data.metric_columns).encode(),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), out)
    return out
