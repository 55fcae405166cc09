"""Dotted paths into the study and trial documents: parse and join them, check them against the
pydantic models (with a did-you-mean), and get or set the value they address in a plain document.

Two path namespaces (dotted, ``*`` maps over a list, an integer indexes one):
- *study paths* address the study document: ``dataset.imbalance_ratio``, ``method.name``,
  ``backbones.*.pretrain.imbalance_ratio``, ``backbones.0.name``, ``backbone_index``. Grid axes,
  ``search.where`` and ``--set`` use them.
- *trial paths* address ``trainables.config.TrialConfig``: ``finetune.lr``, ``backdoor.strata``,
  ``backbone.pretrain.seed``, ``pool.0.name``. ``search.space`` uses them (the searcher sets
  sampled values on a cell's trial config).
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Annotated, Any, Callable, Iterable, Sequence

from pydantic import BaseModel

from platform.errors import did_you_mean, show_value
from trainables.config import MethodConfig

Segment = str | int
PathTuple = tuple[Segment, ...]


# --------------------------------------------------------------------------------------------
# Paths: static resolution against the models (for did-you-mean), get/set on documents.
# --------------------------------------------------------------------------------------------

def split_path(path: str) -> list[Segment]:
    """'backbones.0.name' -> ['backbones', 0, 'name'] ('*' stays a string)."""
    return [int(s) if s.lstrip("-").isdigit() else s for s in path.split(".")]


def join_path(segments: Iterable[Segment]) -> str:
    """The inverse of ``split_path``."""
    return ".".join(str(s) for s in segments)


def _unwrap(annotation: Any) -> list[Any]:
    """The non-None members of an Optional/Union annotation (or the annotation itself)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) if arg is not type(None) for a in _unwrap(arg)]
    return [annotation]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _method_fields() -> dict[str, Any]:
    """A method block's possible fields: those of every registered method's config (the union
    tagged by ``name``; which of them a cell may set depends on its method, checked on validation)."""
    from trainables.methods import METHODS
    out: dict[str, Any] = {}
    for _, method in METHODS.items():
        for name, info in method.config.model_fields.items():
            out.setdefault(name, info)
    out["name"] = MethodConfig.model_fields["name"]
    return out


def resolve_path(model: type[BaseModel], segments: Sequence[Segment],
                 roots: Sequence[str] | None = None) -> tuple[list[Segment], Any]:
    """Check ``segments`` against ``model``'s fields; return (segments with a dict key joined,
    the annotation at the end). Raises ValueError with a did-you-mean when a field does not exist.

    A ``dict[str, X]`` field takes the rest of the path as one key (grid axes contain dots).
    """
    annotation: Any = model
    out: list[Segment] = []
    for i, seg in enumerate(segments):
        where = join_path(out) or "the study"
        members = _unwrap(annotation)
        sub = next((m for m in members if _is_model(m)), None)
        seq = next((m for m in members if typing.get_origin(m) is list), None)
        mapping = next((m for m in members if typing.get_origin(m) is dict), None)
        if sub is not None and isinstance(seg, str) and seg != "*":
            fields = _method_fields() if sub is MethodConfig else sub.model_fields
            known = list(fields) if (i or roots is None) else list(roots)
            if seg not in known:
                raise ValueError(f"no field {seg!r} in {where}{did_you_mean(seg, known)} "
                                 f"(fields: {', '.join(known)})")
            annotation = fields[seg].annotation
            out.append(seg)
        elif seq is not None and (isinstance(seg, int) or seg == "*"):
            annotation = (typing.get_args(seq) or (Any,))[0]
            out.append(seg)
        elif mapping is not None:
            out.append(join_path(segments[i:]))
            return out, (typing.get_args(mapping) or (str, Any))[1]
        elif sub is not None:
            raise ValueError(f"{where} is a mapping: {seg!r} is not one of its fields "
                             f"({', '.join(sub.model_fields)})")
        elif seq is not None:
            raise ValueError(f"{where} is a list: index it with an integer or '*', not {seg!r}")
        else:
            raise ValueError(f"{where} is a single value, it has no field {seg!r}")
    return out, annotation


def get_path(doc: Any, segments: Sequence[Segment]) -> Any:
    """The value at ``segments`` in a nested dict/list document (``*`` gives a list)."""
    if not segments:
        return doc
    seg, rest = segments[0], segments[1:]
    if seg == "*":
        if not isinstance(doc, list):
            raise KeyError(f"'*' needs a list, found {show_value(doc)}")
        return [get_path(item, rest) for item in doc]
    if isinstance(doc, list) and isinstance(seg, int):
        if not -len(doc) <= seg < len(doc):
            raise KeyError(f"index {seg} is out of range: the list has {len(doc)} item(s)")
        return get_path(doc[seg], rest)
    if isinstance(doc, dict) and seg in doc:
        return get_path(doc[seg], rest)
    raise KeyError(f"{seg!r} does not exist here")


#: Where a method block sits (its parent key, or ``baselines`` two levels up): setting its ``name``
#: to another method drops the fields that method does not have.
_METHOD_KEYS = frozenset({"method", "stratum_method"})


def _sets_method_name(segments: Sequence[Segment]) -> bool:
    return len(segments) >= 2 and segments[-1] == "name" and (
        segments[-2] in _METHOD_KEYS or (len(segments) >= 3 and segments[-3] == "baselines"))


def keep_method_fields(block: dict) -> None:
    """Drop, in place, the fields of a method block its (new) method does not have: a grid value or
    a searched value that changes ``name`` leaves the other method's fields behind. The one place
    this is decided; an unknown name keeps every field (validation then names it)."""
    from trainables.methods import METHODS
    name = block.get("name")
    if name in METHODS:
        for key in [k for k in block if k not in METHODS.get(name).config.model_fields]:
            del block[key]


def set_path(doc: Any, segments: Sequence[Segment], value: Any) -> None:
    """Set ``value`` at ``segments`` in place (``*`` sets it in every list item); missing or null
    mappings on the way are created. Raises KeyError for an index out of range. Setting a method's
    ``name`` (``method.name``, ``backdoor.stratum_method.name``, ``backdoor.baselines.0.name``) to
    another method drops the fields that method does not have (``keep_method_fields``)."""
    _set_path(doc, segments, value, _sets_method_name(segments))


def setting_order(items: Iterable[Any], segments_of: Callable[[Any], Sequence[Segment]]) -> list[Any]:
    """``items`` (values to set at once: a grid cell's axes) in the order that makes the result
    independent of theirs: shorter paths first (a whole block, e.g. ``method``, before the fields
    inside it, so the more specific setting wins), and at one depth those that set a method's
    ``name`` before the others (a stable sort: a later value for the same path still wins). So a
    method field set next to a method change (a ``method.tau`` axis and a ``method.name`` axis, in
    either order) is never dropped by the name change (``keep_method_fields``), a field the new
    method lacks is then named by validation, and a ``method.name`` axis next to a ``method`` block
    axis sets the name in every order. ``segments_of(item)`` gives an item's path segments."""
    def key(item: Any) -> tuple[int, bool]:
        segments = segments_of(item)
        return len(segments), not _sets_method_name(segments)
    return sorted(items, key=key)


def _set_path(doc: Any, segments: Sequence[Segment], value: Any, method_name: bool) -> None:
    seg, rest = segments[0], segments[1:]
    if seg == "*" or isinstance(seg, int):
        if not isinstance(doc, list):
            raise KeyError(f"{seg!r} needs a list, found {show_value(doc)}")
        if seg != "*" and not -len(doc) <= seg < len(doc):
            raise KeyError(f"index {seg} is out of range: the list has {len(doc)} item(s)")
        targets = range(len(doc)) if seg == "*" else [seg]
    else:
        if not isinstance(doc, dict):
            raise KeyError(f"{seg!r} needs a mapping, found {show_value(doc)}")
        targets = [seg]
    for t in targets:
        if not rest:
            changed = method_name and isinstance(doc, dict) and doc.get(t) != value
            doc[t] = copy.deepcopy(value)
            if changed:
                keep_method_fields(doc)
            continue
        if isinstance(doc, dict) and doc.get(t) is None:
            if isinstance(rest[0], int) or rest[0] == "*":
                raise KeyError(f"{t!r} is not set here, so it has no item {rest[0]!r}: set the "
                               f"whole list instead, e.g. {t}=[...]")
            doc[t] = {}
        _set_path(doc[t], rest, value, method_name)


def _matches(pattern: Sequence[Segment], concrete: Sequence[Segment]) -> bool:
    """True when ``pattern`` (with '*') is a prefix of the concrete path ``concrete``."""
    return len(pattern) <= len(concrete) and all(
        p == "*" or p == c or str(p) == str(c) for p, c in zip(pattern, concrete))
