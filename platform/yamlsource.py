"""Where a study came from and how its errors are placed: ``Source`` (the line of every YAML node
and the paths command-line flags set), the size limits on a study file and the YAML composer that
enforces them while recording lines (``_compose``), and ``pydantic_issues``, which turns a pydantic
``ValidationError`` into ``Issue``s naming file, line, field, value and the expectation in plain words.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from platform.dotpath import PathTuple, Segment, _is_model, _matches, _unwrap, join_path
from platform.errors import Issue, SpecError, did_you_mean


# --------------------------------------------------------------------------------------------
# Source: the YAML file's lines and the command-line overrides, to place every error.
# --------------------------------------------------------------------------------------------

@dataclass
class Source:
    """Lines of the nodes of a study file and the paths command-line flags set."""

    file: str
    lines: dict[PathTuple, int] = field(default_factory=dict)
    origins: list[tuple[PathTuple, str]] = field(default_factory=list)  # (path, flag text)

    def locate(self, path: Sequence[Segment]) -> tuple[int | None, str | None]:
        """(line, flag) of the deepest known node on ``path``; flag when an override set it."""
        path = tuple(path)
        for prefix, flag in reversed(self.origins):
            if _matches(prefix, path) or _matches(path, prefix):
                return None, flag
        for n in range(len(path), -1, -1):
            key = tuple(str(s) if isinstance(s, str) else s for s in path[:n])
            if key in self.lines:
                return self.lines[key], None
        return None, None

    def issue(self, path: Sequence[Segment], message: str, value: Any = None, *,
              has_value: bool = True, line_path: Sequence[Segment] | None = None,
              context: str | None = None) -> Issue:
        """An Issue for ``path`` placed at the line of ``line_path`` (default: ``path``)."""
        line, origin = self.locate(path if line_path is None else line_path)
        kw = {"value": value} if has_value else {}
        return Issue(path=join_path(path), message=message, line=line, origin=origin,
                     context=context, **kw)


# --------------------------------------------------------------------------------------------
# Limits: a study file is small; anything far larger is a mistake or an attack (an alias bomb
# expands a 1 KB file into gigabytes). Each limit is checked before the costly step it guards.
# --------------------------------------------------------------------------------------------

MAX_STUDY_BYTES = 1_000_000
"""Largest study file read (bytes)."""
MAX_YAML_ALIASES = 100
"""Most alias references (``*name``) in a study file."""
MAX_YAML_NODES = 100_000
"""Most YAML nodes (mapping keys, values, list items) after aliases are expanded."""
MAX_LIST_ITEMS = 10_000
"""Longest list anywhere in a study (seeds, grid values, ...)."""
MAX_STUDY_TRIALS = 100_000
"""Most trials a study may plan: grid cells x seeds x configurations per cell (before expansion)."""


def _check_yaml_size(node: yaml.Node, file: str) -> None:
    """Refuse a composed document with too many aliases, nodes (expanded) or list items."""
    sizes: dict[int, int] = {}
    refs: dict[int, int] = {}
    busy: set[int] = set()
    issues: list[Issue] = []

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise SpecError([Issue("", "an alias refers to a node that contains it (a recursive "
                                   "structure); remove the alias", line=n.start_mark.line + 1)], file)
        busy.add(key)
        children: list[yaml.Node] = []
        if isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
            if len(children) > MAX_LIST_ITEMS and not issues:
                issues.append(Issue("", f"a list of {len(children)} items; at most "
                                    f"{MAX_LIST_ITEMS} are allowed (MAX_LIST_ITEMS)",
                                    line=n.start_mark.line + 1))
        total = 1
        for child in children:
            refs[id(child)] = refs.get(id(child), 0) + 1
            total += size(child)
        busy.discard(key)
        sizes[key] = total
        return total

    try:
        total = size(node)
    except RecursionError:
        raise SpecError([Issue("", "the YAML is nested too deeply; flatten it")], file) from None
    aliases = sum(n - 1 for n in refs.values() if n > 1)
    if aliases > MAX_YAML_ALIASES:
        issues.append(Issue("", f"{aliases} alias references; at most {MAX_YAML_ALIASES} are "
                            "allowed (MAX_YAML_ALIASES): write the values out"))
    if total > MAX_YAML_NODES:
        issues.append(Issue("", f"{total} YAML nodes once aliases are expanded; at most "
                            f"{MAX_YAML_NODES} are allowed (MAX_YAML_NODES)"))
    if issues:
        raise SpecError(issues, file)


def _compose(text: str, file: str) -> tuple[Any, dict[PathTuple, int]]:
    """``yaml.safe_load`` of ``text`` plus the 1-based line of every mapping key and list item."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_yaml_size(node, file)
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise SpecError([Issue("", "the YAML is nested too deeply; flatten it")], file) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise SpecError([Issue("", f"YAML syntax error: {problem}", line=line)], file) from None
    except yaml.YAMLError as e:
        raise SpecError([Issue("", f"YAML error: {e}")], file) from None
    finally:
        loader.dispose()
    lines: dict[PathTuple, int] = {}
    issues: list[Issue] = []

    def walk(n: yaml.Node, path: PathTuple) -> None:
        if isinstance(n, yaml.MappingNode):
            first: dict[Any, int] = {}
            for k, v in n.value:
                key: Segment = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                line = k.start_mark.line + 1
                if key in first and key != "<<":
                    issues.append(Issue(join_path(path + (key,)), f"key {key!r} appears twice "
                                        f"(first on line {first[key]}); keep one", line=line))
                first.setdefault(key, line)
                lines[path + (key,)] = line
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if node is not None:
        walk(node, ())
    if issues:
        raise SpecError(issues, file)
    return data, lines


# --------------------------------------------------------------------------------------------
# pydantic errors -> Issues with plain-words expectations.
# --------------------------------------------------------------------------------------------

def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


_EXPECT = {
    "missing": lambda c: "is required",
    "greater_than_equal": lambda c: f"must be >= {_num(c['ge'])}",
    "greater_than": lambda c: f"must be > {_num(c['gt'])}",
    "less_than_equal": lambda c: f"must be <= {_num(c['le'])}",
    "less_than": lambda c: f"must be < {_num(c['lt'])}",
    "int_type": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be an integer",
    "float_type": lambda c: "must be a number",
    "float_parsing": lambda c: "must be a number",
    "bool_type": lambda c: "must be true or false",
    "bool_parsing": lambda c: "must be true or false",
    "string_type": lambda c: "must be a string",
    "list_type": lambda c: "must be a list",
    "dict_type": lambda c: "must be a mapping (key: value)",
    "model_type": lambda c: "must be a mapping (key: value)",
    "model_attributes_type": lambda c: "must be a mapping (key: value)",
    "literal_error": lambda c: f"must be one of {c['expected']}",
    "too_short": lambda c: f"must have at least {c['min_length']} item(s)",
    "too_long": lambda c: f"must have at most {c['max_length']} item(s)",
    "string_pattern_mismatch": lambda c: f"must match the pattern {c['pattern']}",
}
_PATTERN_HELP = {"name": "must be a slug: lowercase letters, digits, '-' and '_', starting with a "
                         "letter or digit, at most 64 characters"}


def _field_info(model: type[BaseModel], loc: Sequence[Segment]) -> tuple[list[Segment], Any, Any]:
    """(loc without union-member tags, the FieldInfo of the last field, the parent model)."""
    annotation: Any = model
    clean: list[Segment] = []
    info = parent = None
    for seg in loc:
        members = _unwrap(annotation)
        sub = next((m for m in members if _is_model(m)), None)
        seq = next((m for m in members if typing.get_origin(m) is list), None)
        mapping = next((m for m in members if typing.get_origin(m) is dict), None)
        if sub is not None and isinstance(seg, str) and seg in sub.model_fields:
            parent, info = sub, sub.model_fields[seg]
            annotation = info.annotation
        elif seq is not None and isinstance(seg, int):
            annotation, info = (typing.get_args(seq) or (Any,))[0], None
        elif mapping is not None and isinstance(seg, str):
            annotation, info = (typing.get_args(mapping) or (str, Any))[1], None
        elif sub is not None and isinstance(seg, str) and len(members) == 1:
            parent, info, annotation = sub, None, Any  # an unknown key (extra_forbidden)
        else:
            continue  # a union member tag such as 'function-after[...]' or 'list[int]'
        clean.append(seg)
    return clean, info, parent


def pydantic_issues(err: ValidationError, model: type[BaseModel], source: Source,
                    prefix: PathTuple = (), context: str | None = None,
                    line_path: Sequence[Segment] | None = None) -> list[Issue]:
    """Turn a ValidationError on ``model`` into Issues (paths prefixed by ``prefix``)."""
    issues: list[Issue] = []
    seen: set[str] = set()
    for e in err.errors(include_url=False):
        loc, info, parent = _field_info(model, e["loc"])
        kind, ctx = e["type"], e.get("ctx") or {}
        if kind == "extra_forbidden":
            known = list(parent.model_fields) if parent is not None else []
            key = str(loc[-1]) if loc else "?"
            message = (f"unknown field {key!r}{did_you_mean(key, known)}"
                       + (f" (fields here: {', '.join(known)})" if known else ""))
        elif kind == "value_error" and "error" in ctx:
            message = str(ctx["error"])
        elif kind == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_HELP:
            message = _PATTERN_HELP[str(loc[-1])]
        elif kind in _EXPECT:
            message = _EXPECT[kind](ctx)
        else:
            message = e["msg"]
        if info is not None and info.description and kind not in ("extra_forbidden", "value_error"):
            message += f" ({info.description})"
        path = prefix + tuple(loc)
        if join_path(path) in seen:  # a union reports one problem per member
            continue
        seen.add(join_path(path))
        issues.append(source.issue(path, message, e["input"], has_value=kind != "missing",
                                   line_path=line_path, context=context))
    return issues
