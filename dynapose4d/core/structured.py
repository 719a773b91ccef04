"""Typed settings from dataclasses (OmegaConf structured): defaults, then YAML presets (a path or a preset name,
with `defaults: [base.yaml]` chains), then `key.sub=value` overrides; plain dicts and short hashes of them; and
each field's doc read from the comment on the line where it is defined (`dynapose4d config show`).

Unknown keys and wrong types fail with a `ConfigError` that names the file or override and the key; so do values
outside a field's rule: a config dataclass lists, in a `RULES` class variable, a `Bound` for each numeric field
(each element of a list of numbers) and the allowed words of each string field that has a fixed set
(`check_rules`); any float must also be finite. Used by the run config (`dynapose4d.pipeline.config`) and by
`train-cape`'s settings alike.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import json
import math
import os
import tokenize
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dynapose4d.core.errors import ConfigError

T = TypeVar("T")

# Where `--config NAME` looks for presets: the folder installed with the package, then a source checkout's configs/.
PACKAGED_PRESETS = Path(__file__).resolve().parent / "configs"
SOURCE_PRESETS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Bound:
    """The allowed values of a numeric config field (of each element of a list field): `low <= v <= high`, the ends
    excluded with `above` / `below`; None leaves that side open. Values must be finite whatever the bound."""

    low: float | None = None
    high: float | None = None
    above: bool = False  # the low end is excluded (e.g. a learning rate: > 0)
    below: bool = False  # the high end is excluded

    def problem(self, value: float) -> str | None:
        """Why `value` breaks the bound ("must be > 0"), or None when it does not."""
        if not math.isfinite(value):
            return "must be a finite number"
        too_low = self.low is not None and (value <= self.low if self.above else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.below else value > self.high)
        return f"must be {self.describe()}" if too_low or too_high else None

    def describe(self) -> str:
        """The allowed values in words: "> 0", "in [0, 1]", "any number"."""
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.above else '['}{low}, {high}{')' if self.below else ']'}"
        if self.low is not None:
            return f"{'>' if self.above else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.below else '<='} {high}"
        return "any number"


def _number(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else f"{x}"


ANY = Bound()  # any finite number
AT_LEAST_0 = Bound(0)  # counts that may be 0 (off), weights, learning rates that may be 0 (frozen)
AT_LEAST_1 = Bound(1)  # counts and sizes that must be at least one
POSITIVE = Bound(0, above=True)  # learning rates, scales, frame rates
FRACTION = Bound(0, 1)  # probabilities and shares

# A field's rule: a Bound for a number (or list of numbers), the allowed words for a string.
Rule = Union[Bound, tuple[str, ...]]


def check_rules(obj: Any, prefix: str = "") -> None:
    """ConfigError naming the key for the first field of the config dataclass `obj` (recursively) whose value breaks
    its rule in `type(obj).RULES`, or is a float that is not finite."""
    rules: dict[str, Rule] = getattr(type(obj), "RULES", {})
    for f in fields(obj):
        value, key, rule = getattr(obj, f.name), f"{prefix}{f.name}", rules.get(f.name)
        if is_dataclass(value):
            check_rules(value, key + ".")
            continue
        if isinstance(rule, tuple):  # a word, or each word of a list
            for word in value if isinstance(value, list) else [value]:
                if word not in rule:
                    raise ConfigError(f"config key '{key}': {word!r} is not one of {list(rule)}")
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            problem = (rule or ANY).problem(v)
            if problem:
                raise ConfigError(f"config key '{key}': {problem}, got {v!r}")


def ordered_pair(values: list[float], key: str) -> None:
    """ConfigError naming `key` unless `values` is a [low, high] pair with low <= high."""
    if len(values) != 2 or values[0] > values[1]:
        raise ConfigError(f"config key '{key}': expected [low, high] with low <= high, got {list(values)}")


def _fail(e: Exception, where: str) -> ConfigError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ConfigError(f"{where}: config key '{key}': {msg}" if key else f"{where}: {msg}")


def merge_structured(schema: type[T], path: str | Path | None = None,
                     overrides: list[str] | tuple[str, ...] = ()) -> T:
    """An instance of the dataclass `schema`: its defaults, then an optional YAML file (or a chain via
    `defaults: [file.yaml]`), then `key.sub=value` overrides. Raises ConfigError naming the file or override and
    the key on unknown keys, wrong types, values outside their `RULES` (`check_rules`) or unreadable YAML."""
    cfg = OmegaConf.structured(schema)
    layers: list[tuple[str, Any]] = []  # (where, the config merged so far), to name the layer that broke a rule
    if path is not None:
        for layer in _yaml_chain(resolve_preset(path)):
            try:
                cfg = OmegaConf.merge(cfg, layer[1])
            except OmegaConfBaseException as e:
                raise _fail(e, str(layer[0])) from None
            layers.append((str(layer[0]), cfg))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"--set {ov!r}: expected key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as e:
            raise _fail(e, f"--set {ov}") from None
        layers.append((f"--set {ov}", cfg))
    obj = OmegaConf.to_object(cfg)
    try:
        check_rules(obj)
    except ConfigError:
        for where, merged in layers:  # the rules hold field by field: the first layer that breaks one set it
            _check_layer(merged, where)
        raise
    return obj  # type: ignore[return-value]


def _check_layer(cfg: Any, where: str) -> None:
    """`check_rules` on the config as merged up to one layer, the error naming `where` (its file or override)."""
    try:
        check_rules(OmegaConf.to_object(cfg))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except OmegaConfBaseException:  # a mandatory value still missing: a later layer sets it
        pass


def known_keys(schema: type, data: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """`data` (parsed YAML) with the keys the dataclass `schema` does not have removed, recursively, and the
    dotted names of those removed: how a file written by an earlier version (a key since renamed or dropped) is
    read. Values are left as they are (a wrong type still fails when merged)."""
    if not (is_dataclass(schema) and isinstance(data, dict)):
        return data, []
    names = {f.name for f in fields(schema)}
    hints = _field_types(schema)
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in data.items():
        if key not in names:
            dropped.append(f"{prefix}{key}")
            continue
        out[key], sub = known_keys(hints.get(key), value, f"{prefix}{key}.")
        dropped += sub
    return out, dropped


def _field_types(schema: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(schema)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no recursion into them
        return {}


def preset_names() -> list[str]:
    """The preset names `--config` accepts (e.g. "cpu", "cape/gpu"): packaged ones, then a checkout's configs/."""
    names: list[str] = []
    for root in (PACKAGED_PRESETS, SOURCE_PRESETS):
        if root.is_dir():
            names += [p.relative_to(root).with_suffix("").as_posix() for p in sorted(root.rglob("*.yaml"))]
    return list(dict.fromkeys(names))


def resolve_preset(name_or_path: str | Path) -> Path:
    """The YAML file of `--config`: an existing path wins; otherwise a preset name, with or without ".yaml"
    ("cpu", "cape/gpu.yaml"), in the presets installed with the package, then in a source checkout's configs/.
    ConfigError listing the presets when neither exists."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_file():
        return path
    if not path.is_absolute():
        rel = path if path.suffix in (".yaml", ".yml") else path.with_name(path.name + ".yaml")
        for root in (PACKAGED_PRESETS, SOURCE_PRESETS):
            for cand in (root / rel, root / path):
                if cand.is_file():
                    return cand
    names = preset_names()
    raise ConfigError(f"{name_or_path}: config file not found, and no preset of that name"
                      + (f" (presets: {', '.join(names)})" if names else ""))


def _yaml_chain(path: Path) -> list[tuple[Path, Any]]:
    """A YAML file and the files named in its `defaults:` list (relative to it), base first."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = OmegaConf.load(path)
    except Exception as e:  # yaml errors
        raise ConfigError(f"{path}: unreadable YAML ({str(e).splitlines()[0]})") from None
    chain: list[tuple[Path, Any]] = []
    if "defaults" in data:
        for base in data.pop("defaults"):
            chain += _yaml_chain(path.parent / str(base))
    return chain + [(path, data)]


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass instance (for YAML, W&B and hashing)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_hash(section: Any) -> str:
    """Stable short hash of a config section (a dataclass or dict), used by resume to detect changes."""
    d = OmegaConf.to_container(OmegaConf.structured(section)) if not isinstance(section, dict) else section
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----- field docs: the comment on each dataclass field's line -------------------------------------------------

def _comment_lines(source: str) -> tuple[dict[int, str], set[int]]:
    """({line: comment text}, lines holding only a comment) of a piece of Python source (1-based lines)."""
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in skip:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return comments, {n for n in comments if n not in code_lines}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its doc} of a config dataclass, read from its source: the comment on the field's lines;
    a comment block right above a field without one; comment-only lines right after a field continue its
    comment. A field whose type is a dataclass and has no comment gets that class's docstring (first line).
    Base classes' fields included."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if is_dataclass(k)]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        source = inspect.cleandoc("\n" + source) if source[:1].isspace() else source
        comments, only = _comment_lines(source)
        body = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)][0].body
        nodes = [n for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
        for i, node in enumerate(nodes):
            own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments and n not in only]
            if own:  # continuation lines, unless they are the comment block above the next field
                n = node.end_lineno + 1
                nxt = nodes[i + 1] if i + 1 < len(nodes) else None
                block = []
                while n in only:
                    block.append(comments[n])
                    n += 1
                next_has_own = nxt is not None and any(k in comments and k not in only
                                                       for k in range(nxt.lineno, nxt.end_lineno + 1))
                if block and not (nxt is not None and n == nxt.lineno and not next_has_own):
                    own += block
            else:  # the comment block right above
                n, block = node.lineno - 1, []
                while n in only:
                    block.insert(0, comments[n])
                    n -= 1
                own = block
            docs[node.target.id] = " ".join(own)
    for f in fields(cls):
        sub = None if docs.get(f.name) else _dataclass_default(f)
        if sub is not None:
            docs[f.name] = (inspect.getdoc(type(sub)) or "").split("\n")[0]
    return docs


def _dataclass_default(f: Any) -> Any:
    """The default of a dataclass-valued field (None when it is not one)."""
    from dataclasses import MISSING

    value = f.default_factory() if f.default_factory is not MISSING else f.default
    return value if is_dataclass(value) and not isinstance(value, type) else None


def undocumented_fields(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields of a config dataclass instance (nested ones included) that have no doc."""
    missing = []
    docs = field_docs(type(obj))
    for f in fields(obj):
        if not docs.get(f.name):
            missing.append(prefix + f.name)
        value = getattr(obj, f.name)
        if is_dataclass(value):
            missing += undocumented_fields(value, f"{prefix}{f.name}.")
    return missing


def _flow(value: Any) -> str:
    """A value as one line of flow-style YAML."""
    text = yaml.safe_dump([value], default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text[1:-1]  # drop the list brackets


def to_commented_yaml(obj: Any, indent: int = 0) -> str:
    """A config dataclass instance as YAML, each field followed by its doc (`field_docs`) as a comment, and by the
    values its rule allows ("(allowed: >= 1)")."""
    docs = field_docs(type(obj))
    lines = []
    pad = "  " * indent
    for f in fields(obj):
        value = getattr(obj, f.name)
        doc = " ".join(docs.get(f.name, "").split())
        rule = getattr(type(obj), "RULES", {}).get(f.name)
        if isinstance(rule, Bound) and rule != ANY:
            doc = f"{doc} (allowed: {rule.describe()})".strip()
        comment = f"  # {doc}" if doc else ""
        key = f.name if yaml.safe_load(f.name) == f.name else _flow(f.name)  # e.g. a key "on" or "yes"
        if is_dataclass(value):
            lines.append(f"{pad}{key}:{comment}")
            lines.append(to_commented_yaml(value, indent + 1).rstrip("\n"))
        else:
            lines.append(f"{pad}{key}: {_flow(_plain(value))}{comment}")
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """Enums as their names, tuples as lists, paths as strings (what OmegaConf writes)."""
    import enum

    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
