"""Loading a study file: ``load_study`` reads it (with the size and encoding checks),
``parse_study`` composes the YAML, applies ``--set path=value`` overrides (``parse_override``) and
the CLI's location flags, validates the ``Study`` model, then the study's size, every grid cell
and the search space, and the published numbers; any problem raises ``SpecError`` naming file,
line, field, value and fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import ValidationError

from platform.dotpath import resolve_path, set_path, split_path
from platform.errors import Issue, SpecError
from platform.grid import _check_published, _check_search, check_study_size, expand_grid
from platform.spec import Study
from platform.yamlsource import MAX_STUDY_BYTES, Source, _compose, pydantic_issues


# --------------------------------------------------------------------------------------------
# Overrides (--set path=value and the CLI's location flags).
# --------------------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[str, Any]:
    """'finetune.lr=0.1' -> ('finetune.lr', 0.1): the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError("expected PATH=VALUE, e.g. --set finetune.lr=0.01")
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path:
        raise ValueError("the path before '=' is empty")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"the value {raw!r} is not valid YAML: {e}") from None


def _apply_override(doc: dict, path: str, value: Any, flag: str, source: Source) -> None:
    """Set a study path in the raw document; an unknown path fails naming ``flag``."""
    try:
        segments, _ = resolve_path(Study, split_path(path))
        set_path(doc, segments, value)
    except (ValueError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        raise SpecError([Issue(path, f"bad {flag.split()[0]} path: {msg}", origin=flag)],
                        source.file) from None
    source.origins.append((tuple(segments), flag))


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------

def parse_study(text: str, file: str = "<study>", overrides: Sequence[str] = (),
                flags: Sequence[tuple[str, Any, str]] = ()) -> Study:
    """Validate study YAML ``text`` (as if read from ``file``) with ``--set`` ``overrides``
    ('path=value') and ``flags`` ((study path, value, flag text) from other CLI options)."""
    data, lines = _compose(text, file)
    source = Source(file=file, lines=lines)
    if data is None:
        data = {}
        if not overrides and not flags:
            raise SpecError([Issue("", "the study file is empty; it needs at least 'name'")], file)
    if not isinstance(data, dict):
        raise SpecError([source.issue((), "a study is a mapping of fields (name: ..., dataset: ...)",
                                      data)], file)
    for text_ in overrides:
        flag = f"--set {text_}"
        try:
            path, value = parse_override(text_)
        except ValueError as e:
            raise SpecError([Issue("", str(e), origin=flag)], file) from None
        _apply_override(data, path, value, flag, source)
    for path, value, flag in flags:
        _apply_override(data, path, value, flag, source)
    try:
        study = Study.model_validate(data)
    except ValidationError as err:
        raise SpecError(pydantic_issues(err, Study, source), file) from None
    study._source = source
    check_study_size(study, source)
    _check_search(study, expand_grid(study))
    _check_published(study)
    return study


def load_study(path: str | Path, overrides: Sequence[str] = (),
               flags: Sequence[tuple[str, Any, str]] = ()) -> Study:
    """Read and fully validate the study file ``path`` (see ``parse_study``)."""
    file = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_STUDY_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([Issue("", "no such study file (give a path such as studies/smoke.yaml)")],
                        file) from None
    except OSError as e:
        raise SpecError([Issue("", f"cannot read the study file: {e}")], file) from None
    if len(raw) > MAX_STUDY_BYTES:
        raise SpecError([Issue("", f"the file is larger than {MAX_STUDY_BYTES:,} bytes "
                                   "(MAX_STUDY_BYTES); a study file is a short YAML document")],
                        file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError([Issue("", f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {column} "
                                   "cannot be decoded; save the file as UTF-8", line=line)],
                        file) from None
    return parse_study(text, file, overrides, flags)
