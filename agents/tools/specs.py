"""Frozen settings specs: an experiment's or a tool's settings as one frozen dataclass, built or updated from keywords
by :func:`spec_with` (what ``run_search(spec, budget=100)``-style entry points do with their keywords)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from ffenv.errors import FFPruneError

S = TypeVar("S")


def spec_with(cls: type[S], spec: S | str | Path | None, settings: Mapping[str, Any], what: str, kind: str) -> S:
    """An experiment's spec (a frozen dataclass ``cls``) from ``spec`` (``None``: the defaults) with ``settings`` (its
    fields, given by keyword) replacing its own: what ``run_search(spec, budget=100)``-style entry points do with their
    keywords. Where ``cls`` declares ``named_by = (field, description)``, ``spec`` may also be a plain string (or a
    path) naming that field (``run_bench("FFPrune-OPT-v0", budget=40)``: an env id; ``allocate("p.policy.pt",
    target=0.5)``: a policy file), the other fields at their defaults.

    One-line :class:`FFPruneError`: a setting that is not a field (``"<what>: [...] are not <kind> settings; settings:
    [<the fields>]"``), a spec of another type, the named field given twice, and, without a spec, a field that has no
    default and is not given."""
    declared = sorted(fields(cls), key=lambda f: f.kw_only)  # type: ignore[arg-type]  # __init__'s order
    names = [f.name for f in declared]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise FFPruneError(f"{what}: {unknown} are not {kind} settings; settings: {names}")
    named_by: tuple[str, str] | None = getattr(cls, "named_by", None)
    if named_by is not None and isinstance(spec, (str, Path)):
        if named_by[0] in settings:
            raise FFPruneError(f"{what}: {named_by[0]} given twice ({str(spec)!r} and {named_by[0]}="
                               f"{settings[named_by[0]]!r}); give it once")
        spec, settings = None, {named_by[0]: spec, **settings}
    if spec is None:
        missing = [f.name for f in declared
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in settings]
        if missing:
            raise FFPruneError(f"{what}: {missing} must be given (a {cls.__name__} or keywords); settings: {names}")
        return cls(**settings)
    if not isinstance(spec, cls):
        alternative = f" or {named_by[1]}" if named_by is not None else ""
        raise FFPruneError(f"{what}: spec must be a {cls.__name__}{alternative}, got {type(spec).__name__}")
    return replace(spec, **settings)  # type: ignore[type-var]
