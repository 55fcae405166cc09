"""``python -m platform.schema``: print the JSON schema of study files (``make schema`` saves it
as studies/study.schema.json, which editors use for completion and checking)."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from platform.spec import Study


def study_schema() -> dict:
    """The JSON schema (draft 2020-12) of a study file."""
    schema = Study.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "ltbias study", **{k: v for k, v in schema.items() if k != "title"}}


def main(argv: Sequence[str] | None = None) -> None:
    """Print the schema to stdout (``--help`` prints the usage instead)."""
    argparse.ArgumentParser(prog="python -m platform.schema",
                            description="Print the JSON schema of study files (make schema saves "
                                        "it as studies/study.schema.json).").parse_args(argv)
    print(json.dumps(study_schema(), indent=2))


if __name__ == "__main__":
    main()
