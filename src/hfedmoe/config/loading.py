"""Config in and out: TOML files and dotted ``--set`` overrides to a checked :class:`RunConfig`
(type errors and value errors in one pass, :func:`config_from_data`), and back to TOML."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, get_type_hints

import tomli_w

from hfedmoe.config.schema import RunConfig, _short, validate
from hfedmoe.errors import HFedMoEError

__all__ = [
    "config_from_dict",
    "config_from_data",
    "config_to_dict",
    "apply_overrides",
    "read_toml",
    "load_config",
    "dump_config",
    "help_rows",
]


def _section_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from nested dicts, collecting unknown keys and type errors."""
    cfg, problems = _build(data)
    if problems:
        raise HFedMoEError("invalid config: " + "; ".join(problems))
    return cfg


def config_from_data(data: dict[str, Any]) -> RunConfig:
    """Build and validate in ONE pass: type errors and value errors reported together.

    A mistyped field keeps its default for the value checks and is reported once (its type error).
    """
    cfg, problems = _build(data)
    validate(cfg, prior=problems)
    return cfg


def _all_fields() -> list[str]:
    """Every dotted field name of a RunConfig (``seed``, ``train.lr``, ...)."""
    out = []
    for name, typ in _section_types(RunConfig).items():
        out += [f"{name}.{k}" for k in _section_types(typ)] if dataclasses.is_dataclass(typ) else [name]
    return out


def _unknown(dotted: str, known: list[str], leaf: str, shown: list[str] | None = None) -> str:
    """``train.lrr: unknown field; did you mean train.lr? (known: ...)``: the closest names in
    the section, else the same or a close name in another section (``train.rounds`` ->
    ``federation.rounds``)."""
    import difflib

    close = difflib.get_close_matches(dotted, known, n=2, cutoff=0.75)
    if not close:
        others = _all_fields()
        close = [f for f in others if f.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(
            dotted, others, n=2, cutoff=0.8)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{dotted}: unknown field{hint} (known: {', '.join(shown or known)})"


def _build(data: dict[str, Any]) -> tuple[RunConfig, list[str]]:
    """A RunConfig with defaults where a field is unknown or mistyped, and the list of problems."""
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    hints = _section_types(RunConfig)
    for key, value in data.items():
        if key not in hints:
            problems.append(_unknown(key, list(hints), key))
            continue
        sub = hints[key]
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                problems.append(f"{key}: expected a table, got {_short(value)}")
                continue
            sub_hints = _section_types(sub)
            sub_kwargs = {}
            for k, v in value.items():
                if k not in sub_hints:
                    problems.append(_unknown(f"{key}.{k}", [f"{key}.{x}" for x in sub_hints], k, list(sub_hints)))
                    continue
                ok, coerced = _coerce(v, sub_hints[k])
                if not ok:
                    problems.append(f"{key}.{k}: expected {_tname(sub_hints[k])}, got {_short(v)}")
                    continue
                sub_kwargs[k] = coerced
            kwargs[key] = sub(**sub_kwargs)
        else:
            ok, coerced = _coerce(value, hints[key])
            if not ok:
                problems.append(f"{key}: expected {_tname(hints[key])}, got {_short(value)}")
                continue
            kwargs[key] = coerced
    return RunConfig(**kwargs), problems


def _tname(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def _coerce(value: Any, typ: Any) -> tuple[bool, Any]:
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return True, float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return True, value
    if typ is bool and isinstance(value, bool):
        return True, value
    if typ is str and isinstance(value, str):
        return True, value
    if typ is list and isinstance(value, list):
        return True, list(value)
    return False, None


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values parse as TOML literals, else as strings."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise HFedMoEError(f"--set: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        except RecursionError:
            raise HFedMoEError(f"--set {key.strip()}: expected a value, got one nested too deeply to parse") from None
        if _depth(value) > 2:
            raise HFedMoEError(f"--set {key.strip()}: expected a scalar or a list, got a value nested deeper")
        parts = key.split(".")
        if len(parts) > 2 or not all(parts):
            raise HFedMoEError(f"--set: expected 'field' or 'section.field', got {key!r}")
        if len(parts) == 1:
            out[parts[0]] = value
        else:
            section = out.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise HFedMoEError(f"--set: {parts[0]} is not a section")
            section[parts[1]] = value
    return out


def read_toml(path: str | Path, field_name: str) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is one HFedMoEError naming ``field_name``."""
    p = Path(path)
    if not p.is_file():
        raise HFedMoEError(f"{field_name}: file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HFedMoEError(f"{field_name}: expected a UTF-8 TOML file, got {p} with a non-UTF-8 byte at "
                           f"offset {exc.start}") from None
    except OSError as exc:
        raise HFedMoEError(f"{field_name}: cannot read {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HFedMoEError(f"{field_name}: {p} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays / inline tables recursively
        raise HFedMoEError(f"{field_name}: expected a config TOML file, got {p} nested too deeply to parse") from None
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise HFedMoEError(f"{field_name}: expected a config TOML file nested at most {MAX_DEPTH} levels, "
                           f"got {p} nested deeper")
    return data


MAX_DEPTH = 16  # a run config is section.field (lists of scalars at most): far below this


def _depth(data: Any) -> int:
    """Nesting depth of tables and arrays, without recursion (a 5,000-deep file must not crash)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML preset (or the defaults when ``path`` is None), apply overrides, validate."""
    data = read_toml(path, "--config") if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return config_from_data(data)


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the fully resolved config as TOML (atomically)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(tomli_w.dumps(config_to_dict(cfg)))
    tmp.replace(path)


def help_rows() -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every field (see also :mod:`hfedmoe.config.describe`)."""
    rows = []
    for sec in dataclasses.fields(RunConfig):
        sub = get_type_hints(RunConfig)[sec.name]
        if dataclasses.is_dataclass(sub):
            inst = sub()
            for f in dataclasses.fields(sub):
                rows.append((f"{sec.name}.{f.name}", repr(getattr(inst, f.name)), f.metadata.get("help", "")))
        else:
            rows.append((sec.name, repr(sec.default), sec.metadata.get("help", "")))
    return rows
