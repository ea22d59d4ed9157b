"""Load YAML with line numbers and check it against declarative field specs, collecting every fault.

Shared by gateway.config (the daemon's config) and gateway.devprofile (device
profiles). Both report every fault at once, each with file, line and key path,
so an installer fixes a file in one pass instead of one restart per typo.

Two steps:
  * `load_document` parses a file into plain Python data and remembers the
    1-based line of every key and list item. It also catches what PyYAML lets
    pass silently: a key given twice (PyYAML keeps the last one).
  * `validate` checks that data against a tree of `Field` specs, fills in
    defaults, and records each fault in `Document.issues`. Unknown keys are
    faults too, with a "did you mean" hint for typos.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.errors import ConfigError, ConfigIssue

KeyPath = tuple[Hashable, ...]

# A config or profile is a few hundred nodes. The limits stop an alias bomb
# ("billion laughs") or a recursive alias from eating the master's little RAM.
MAX_NODES = 100_000
MAX_DEPTH = 40

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Invalid:
    """Marks a value that already has an issue recorded, so nothing complains about it twice."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


def resolve_path(base: Path, value: str) -> Path:
    """A path given in a file, relative ones taken from that file's directory `base`."""
    return Path(os.path.normpath(base / value))


def format_path(path: KeyPath) -> str:
    """("connectors", 2, "unit") -> "connectors[2].unit" (list indexes are 0-based)."""
    out = ""
    for part in path:
        if isinstance(part, str):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]"
    return out


@dataclass
class Document:
    """A parsed YAML file: its plain data, the line of every key, and the faults found in it so far."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)

    def line(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one (a missing key -> its mapping)."""
        for n in range(len(path), -1, -1):
            found = self.lines.get(path[:n])
            if found is not None:
                return found
        return None

    def error(self, path: KeyPath, message: str, line: int | None = None) -> None:
        self.issues.append(self._issue(path, message, line))

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(self._issue(path, message, None))

    def raise_if_invalid(self) -> None:
        """Raise every fault found, this file's first and in line order (other files: profiles it uses)."""
        if self.issues:
            raise ConfigError(sorted(self.issues, key=lambda i: (i.file != self.file, i.file, i.line or 0)))

    def _issue(self, path: KeyPath, message: str, line: int | None) -> ConfigIssue:
        return ConfigIssue(self.file, line if line is not None else self.line(path), format_path(path), message)


# --- loading -------------------------------------------------------------------------


class _TooComplex(Exception):
    """The document nests too deeply or expands to too many nodes."""


def load_document(path: str | Path) -> Document:
    """Read and parse a YAML file. An unreadable file or a syntax error raises ConfigError at once.

    Duplicate keys and unreadable scalars are recorded in `Document.issues`
    and parsing goes on, so they are reported together with schema faults.
    """
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read the file: {exc.strerror or exc}")]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(file, line, "", "the file is not UTF-8 text")]) from exc
    return parse_document(text, file)


def parse_document(text: str, file: str) -> Document:
    """Parse YAML text (see load_document); `file` names it in issues."""
    doc = Document(file, None)
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # already checks for unprintable characters
        node = loader.get_single_node()
        if node is not None:
            doc.data = _Builder(loader, doc).build(node, (), 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError([ConfigIssue(file, mark.line + 1 if mark else None, "", f"YAML syntax: {message}")]) from exc
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            [ConfigIssue(file, line, "", f"YAML syntax: {exc.reason} character {exc.character!r}")]
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"YAML syntax: {exc}")]) from exc
    except (_TooComplex, RecursionError) as exc:
        reason = str(exc) or f"nested more than {MAX_DEPTH} levels deep"
        raise ConfigError([ConfigIssue(file, None, "", f"the document is too complex: {reason}")]) from exc
    finally:
        if loader is not None:
            loader.dispose()
    return doc


class _Builder:
    """Turns composed YAML nodes into plain data, recording lines and duplicate keys in the Document."""

    def __init__(self, loader: yaml.SafeLoader, doc: Document) -> None:
        self.loader = loader
        self.doc = doc
        self.nodes = 0
        self.merged: dict[int, int] = {}  # id(mapping node) -> how many of its entries came from << merges

    def build(self, node: Node, path: KeyPath, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooComplex(f"more than {MAX_NODES} values (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise _TooComplex(f"nested more than {MAX_DEPTH} levels deep (a recursive alias?)")
        line = node.start_mark.line + 1
        self.doc.lines.setdefault(path, line)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if node.tag not in _PLAIN_TAGS:
            self.doc.error(path, f"unsupported YAML tag {node.tag}", line)
            return INVALID
        if isinstance(node, SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.doc.lines[(*path, i)] = item.start_mark.line + 1
                items.append(self.build(item, (*path, i), depth + 1))
            return items
        assert isinstance(node, MappingNode)
        return self.mapping(node, path, depth)

    def scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.doc.error(path, f"cannot read this value: {exc.problem}", node.start_mark.line + 1)
        except (ValueError, TypeError, LookupError, ArithmeticError, AttributeError) as exc:
            # PyYAML's scalar constructors trip over odd input with plain Python errors:
            # 2024-13-45 (ValueError), an empty "!!int" (IndexError), "!!bool x" (KeyError).
            self.doc.error(path, f"cannot read this value {node.value!r}: {exc}", node.start_mark.line + 1)
        return INVALID

    def mapping(self, node: MappingNode, path: KeyPath, depth: int) -> dict[Any, Any]:
        if id(node) not in self.merged:
            own = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
            if own != len(node.value):
                # YAML merge keys (<<: *anchor): PyYAML puts merged entries first, own entries after.
                self.loader.flatten_mapping(node)
            self.merged[id(node)] = len(node.value) - own
        merged = self.merged[id(node)]
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for i, (key_node, value_node) in enumerate(node.value):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self.doc.error(path, "a key must be a plain value, not a list or a mapping", line)
                continue
            key = self.scalar(key_node, path)
            if key is INVALID:
                continue
            if i >= merged:  # an own key may override a merged one, but not another own key
                if key in first_line:
                    self.doc.error(
                        (*path, key),
                        f"duplicate key {key!r} (first given at line {first_line[key]}); YAML would silently keep only the last",
                        line,
                    )
                    continue
                first_line[key] = line
            self.doc.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result


# --- specs -------------------------------------------------------------------------------

_NO_DEFAULT: Any = object()
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Map:
    """A mapping with known keys; any other key is a fault."""

    fields: Mapping[str, Field]


@dataclass(frozen=True)
class ListOf:
    """A list whose items all match one field spec; `single`: one bare item stands for a list of one."""

    item: Field
    single: bool = False


@dataclass(frozen=True)
class DictOf:
    """A mapping with free keys (e.g. value names), each key and value checked by a spec."""

    key: Field
    value: Field


@dataclass(frozen=True)
class Field:
    """What one value must be.

    kind: str, int, float, bool, (int, str), or a Map / ListOf / DictOf. float accepts integers.
    min / max: bounds of a number, or of the length of text and lists (inclusive).
    above: a number must be strictly greater (timeouts > 0).
    check: one more rule; returns what is wrong, or None.
    An absent (or empty) key: required -> fault; else the default; else, for a
    Map with no required keys, its defaults; else the key is left out.
    """

    kind: type | tuple[type, ...] | Map | ListOf | DictOf
    required: bool = False
    default: Any = _NO_DEFAULT
    min: float | None = None
    max: float | None = None
    above: float | None = None
    choices: tuple[Any, ...] | None = None
    check: Check | None = None
    description: str = ""


def dataclass_map(cls: type, specs: Mapping[str, Field]) -> Map:
    """A Map for a settings dataclass: its keys are the field names, and each key's default
    and required-ness come from the dataclass itself, so they are written down only once."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Field] = {}
    for name, spec in specs.items():
        f = known[name]  # a KeyError here is a programming error in the spec table
        if f.default is not dataclasses.MISSING:
            out[name] = dataclasses.replace(spec, default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = dataclasses.replace(spec, default=f.default_factory())
        else:
            out[name] = dataclasses.replace(spec, required=True)
    return Map(out)


# --- validation ---------------------------------------------------------------------------

_KIND_NAMES: dict[Any, str] = {
    str: "text", int: "an integer", float: "a number", bool: "true or false", (int, str): "an integer or text"
}


def validate(doc: Document, spec: Field) -> Any:
    """Check `doc.data` against `spec`, record every fault in `doc.issues`, and return the
    data with defaults filled in. Faulty values are left out of mappings and are INVALID in lists."""
    if doc.data is None:
        doc.error((), "the file is empty")
        return INVALID
    return _check(doc, spec, doc.data, ())


def _check(doc: Document, spec: Field, value: Any, path: KeyPath) -> Any:
    if value is INVALID:
        return INVALID
    kind = spec.kind
    if isinstance(kind, Map):
        result = _check_map(doc, kind, value, path)
    elif isinstance(kind, ListOf):
        result = _check_list(doc, kind, value, path)
    elif isinstance(kind, DictOf):
        result = _check_dict(doc, kind, value, path)
    else:
        result = _check_scalar(doc, kind, value, path)
    if result is INVALID:
        return INVALID
    problem = _bounds(spec, result)
    # A custom rule sees only whole values: a list with a faulty item has been reported already.
    if problem is None and spec.check is not None and not (isinstance(result, list) and any(item is INVALID for item in result)):
        problem = spec.check(result)
    if problem is not None:
        doc.error(path, problem)
        return INVALID
    return result


def _check_scalar(doc: Document, kind: type | tuple[type, ...], value: Any, path: KeyPath) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif isinstance(value, bool):
        ok = False  # Python's bool is an int, but "yes" must not pass for 1
    elif kind is float and isinstance(value, int):
        ok, value = True, float(value)
    else:
        ok = isinstance(value, kind)
    if ok and kind is float and not math.isfinite(value):
        doc.error(path, f"must be a finite number, got {value}")
        return INVALID
    if not ok:
        hint = ""
        if kind is str and isinstance(value, (bool, int, float)):
            hint = "; put it in quotes (YAML reads yes/no/on/off as true/false, and 0042 as an octal number)"
        doc.error(path, f"must be {_KIND_NAMES.get(kind) or getattr(kind, '__name__', kind)}, {_got(value)}{hint}")
        return INVALID
    return value


def _check_map(doc: Document, spec: Map, value: Any, path: KeyPath) -> Any:
    if not isinstance(value, dict):
        doc.error(path, f"must be a mapping (key: value lines), {_got(value)}")
        return INVALID
    for key in value:
        if key not in spec.fields:
            close = close_match(str(key), list(spec.fields))
            hint = f"did you mean {close!r}?" if close else f"expected one of: {', '.join(spec.fields)}"
            doc.error((*path, key), f"unknown key {key!r}; {hint}")
    result: dict[str, Any] = {}
    for name, f in spec.fields.items():
        given = value.get(name)
        if given is None:
            if f.required:
                doc.error((*path, name), "is required" + (" (it is empty)" if name in value else ""))
            elif f.default is not _NO_DEFAULT:
                result[name] = f.default
            elif isinstance(f.kind, Map) and not any(sub.required for sub in f.kind.fields.values()):
                result[name] = _check(doc, f, {}, (*path, name))
            continue
        checked = _check(doc, f, given, (*path, name))
        if checked is not INVALID:
            result[name] = checked
    return result


def _check_list(doc: Document, spec: ListOf, value: Any, path: KeyPath) -> Any:
    if spec.single and not isinstance(value, (list, dict)):
        value = [value]
    if not isinstance(value, list):
        doc.error(path, f"must be a list, {_got(value)}")
        return INVALID
    return [_check(doc, spec.item, item, (*path, i)) for i, item in enumerate(value)]


def _check_dict(doc: Document, spec: DictOf, value: Any, path: KeyPath) -> Any:
    if not isinstance(value, dict):
        doc.error(path, f"must be a mapping (key: value lines), {_got(value)}")
        return INVALID
    result: dict[Any, Any] = {}
    for key, item in value.items():
        checked_key = _check(doc, spec.key, key, (*path, key))
        checked = _check(doc, spec.value, item, (*path, key))
        if checked_key is not INVALID and checked is not INVALID:
            result[checked_key] = checked
    return result


def _bounds(spec: Field, value: Any) -> str | None:
    if spec.choices is not None and value not in spec.choices:
        names = [str(c) for c in spec.choices]
        close = close_match(value, names) if isinstance(value, str) else None
        return f"must be one of {', '.join(names)}, got {value!r}" + (f"; did you mean {close!r}?" if close else "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.min is not None and value < spec.min:
            return f"must be at least {spec.min:g}, got {value}"
        if spec.max is not None and value > spec.max:
            return f"must be at most {spec.max:g}, got {value}"
        if spec.above is not None and value <= spec.above:
            return f"must be greater than {spec.above:g}, got {value}"
    elif isinstance(value, (str, list, dict)):
        unit = "characters" if isinstance(value, str) else "items"
        if spec.min is not None and len(value) < spec.min:
            return "must not be empty" if spec.min == 1 else f"needs at least {spec.min:g} {unit}, has {len(value)}"
        if spec.max is not None and len(value) > spec.max:
            return f"is too long: {len(value)} {unit}, at most {spec.max:g}"
    return None


def close_match(given: str, known: list[str]) -> str | None:
    """The known name `given` is probably a typo of ('baudrat' -> 'baudrate', 'e' -> 'E'), if any."""
    same_case = [k for k in known if k.lower() == given.lower()]
    close = same_case or difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    longer = [k for k in known if len(given) >= 3 and k.startswith(given)]  # 'heidelberg' -> 'heidelberg-energy-control'
    found = close or longer
    return found[0] if found else None


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "got a mapping"
    if isinstance(value, list):
        return "got a list"
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    if isinstance(value, str):
        return f"got text {value[:40]!r}"
    return f"got {value!r}"
