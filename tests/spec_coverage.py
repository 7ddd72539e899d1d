"""Count which normative statements of MQTT 3.1.1 and 5.0 our tests check, and how.

A statement of the Server counts as **covered** only when a test against the running
broker over a socket cites it (a *wire* test). Citations by tests that call the codec,
the topic validator or the engine in-process are **unit-level**: reported separately,
never counted as coverage (issue 18: a unit test of the topic validator cited
[MQTT-4.7.3-1] while on the wire an empty filter was answered SUBACK 0x8F).

How a citation is attributed. Each test file is parsed; each test function cites the
ids in its name (``test_mqtt_3_1_2_24_...``), its docstring and its body (comments
included). A citation outside any test function (a module docstring, a helper, a
parametrize table) is attributed to every test function of that module. The golden
packet catalogue (``tests/codec/golden.py``) is unit-level.

How a test is known to be a wire test: it uses, directly or through fixtures and
helper functions (followed across ``conftest.py`` files and ``from tests... import``),
something that reaches a running broker over a socket: :class:`BrokerProcess` (the
broker as a subprocess), :class:`RawClient`, a ``socket``, paho-mqtt, aiomqtt,
``mosquitto_pub``/``mosquitto_sub``, or the simulator (``iotsim``) run against a broker.

MQTT 3.1 (protocol name ``MQIsdp``) has no numbered normative statements; tests cite
its sections as ``MQTT 3.1 §x.y``. They are counted separately, by section.

Statements come from ``shared/spec/mqtt-normative-statements.csv`` beside the checkout
(or ``--csv``). Only statements that bind the Server (``Server`` or ``both``) count.

    python tests/spec_coverage.py            # summary per version
    python tests/spec_coverage.py --missing  # and the statements not checked on the wire
    python tests/spec_coverage.py --json     # the figures as JSON
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT.parent / "shared" / "spec" / "mqtt-normative-statements.csv"
_ID_TEXT = re.compile(r"MQTT-(\d+)\.(\d+)\.(\d+)-(\d+)")
_ID_NAME = re.compile(r"test_mqtt_(\d+)_(\d+)_(\d+)_(\d+)")
#: "MQTT 3.1 §3.1", "MQTT 3.1 §3.1.2" (not "MQTT 3.1.1"): a section of the 3.1 spec.
_V31_TEXT = re.compile(r"MQTT 3\.1 §\s?(\d+(?:\.\d+)*)")

#: Names whose use means a test talks to a running broker over a socket.
WIRE_NAMES = frozenset({
    "BrokerProcess", "RawClient", "TlsRawClient", "socket", "create_connection",
    "paho", "aiomqtt", "Mosquitto", "start_mosquitto",
})
#: Strings that mean the same in a command line (subprocess arguments).
WIRE_STRINGS = ("mosquitto_pub", "mosquitto_sub", "iotsim")


@dataclass
class Citation:
    """Where one id (or 3.1 section) is cited: test files, wire or unit-level."""

    wire: set[str] = field(default_factory=set)
    unit: set[str] = field(default_factory=set)


@dataclass
class _Function:
    name: str
    params: set[str]  # argument names: the fixtures a test or fixture asks for
    uses: set[str]    # names, attributes and marker strings it uses
    cites: set[str]
    is_test: bool
    is_fixture: bool


def _ids(text: str) -> set[str]:
    found = {"MQTT-{}.{}.{}-{}".format(*m.groups()) for m in _ID_TEXT.finditer(text)}
    found |= {"MQTT-{}.{}.{}-{}".format(*m.groups()) for m in _ID_NAME.finditer(text)}
    found |= {f"MQTT 3.1 §{m.group(1)}" for m in _V31_TEXT.finditer(text)}
    return found


def _uses(node: ast.AST) -> set[str]:
    """Names, attribute names and marker strings used in ``node``."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            names.update(marker for marker in WIRE_STRINGS if marker in sub.value)
        elif isinstance(sub, ast.Import | ast.ImportFrom):
            for alias in sub.names:
                names.add((alias.asname or alias.name).split(".")[0])
            if isinstance(sub, ast.ImportFrom) and sub.module:
                names.add(sub.module.split(".")[0])
    return names


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The arguments pytest fills with fixtures: not those ``parametrize`` or
    hypothesis's ``given`` supply (a parameter named ``raw`` is not the ``raw`` fixture)."""
    args = node.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    for deco in node.decorator_list:
        if not isinstance(deco, ast.Call):
            continue
        target = deco.func
        attr = target.attr if isinstance(target, ast.Attribute) else \
            target.id if isinstance(target, ast.Name) else ""
        if attr == "parametrize" and deco.args:
            first = deco.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names -= {n.strip() for n in first.value.split(",")}
            elif isinstance(first, ast.Tuple | ast.List):
                names -= {e.value for e in first.elts
                          if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        elif attr == "given":
            names -= {k.arg for k in deco.keywords if k.arg}
            positional = [a.arg for a in args.args if a.arg != "self"]
            names -= set(positional[len(positional) - len(deco.args):]) if deco.args else set()
    return names


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
        if isinstance(target, ast.Name) and target.id == "fixture":
            return True
    return False


#: Modules whose import makes the importing name a wire name.
_WIRE_MODULES = ("socket", "paho", "aiomqtt")


class _Module:
    """One parsed file: its functions (top level and in classes), its module-level
    constants with the ids they cite, its imports from ``tests``."""

    def __init__(self, path: Path, tests_dir: Path) -> None:
        self.path = path
        self.rel = str(path.relative_to(tests_dir.parent))
        text = path.read_text(encoding="utf-8", errors="replace")
        self.lines = text.splitlines()
        tree = ast.parse(text, str(path))
        self.functions: dict[str, _Function] = {}
        self.constants: dict[str, set[str]] = {}  # module-level name -> ids it cites
        self.imports: dict[str, tuple[str, str]] = {}  # local name -> (module, name)
        self.wire_aliases: set[str] = set()
        claimed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[0]
                for alias in node.names:
                    local = alias.asname or alias.name
                    if node.module.startswith("tests"):
                        self.imports[local] = (node.module, alias.name)
                    if top in _WIRE_MODULES:
                        self.wire_aliases.add(local)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in _WIRE_MODULES:
                        self.wire_aliases.add((alias.asname or alias.name).split(".")[0])
        for node in tree.body:
            self._top_level(node, claimed)
        # Citations in no function, fixture, class or constant (the module docstring,
        # comments between them): the module's own.
        rest = "\n".join(line for number, line in enumerate(self.lines, start=1)
                         if number not in claimed)
        self.module_cites = _ids(rest)

    def _segment(self, node: ast.stmt) -> tuple[str, range]:
        decorators = getattr(node, "decorator_list", [])
        start = min([d.lineno for d in decorators] + [node.lineno])
        end = node.end_lineno or node.lineno
        return "\n".join(self.lines[start - 1:end]), range(start, end + 1)

    def _top_level(self, node: ast.stmt, claimed: set[int]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self._function(node, claimed)
        elif isinstance(node, ast.ClassDef):
            segment, lines = self._segment(node)
            self.functions.setdefault(node.name, _Function(
                node.name, set(), _uses(node), set(), False, False))
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    self._function(item, claimed)
            if not node.name.startswith("Test"):  # a helper class: its own citations
                claimed.update(lines)
                self.functions[node.name].cites = _ids(segment)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            segment, lines = self._segment(node)
            cites = _ids(segment)
            for target in targets:
                if isinstance(target, ast.Name):
                    self.constants[target.id] = cites
            claimed.update(lines)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef,
                  claimed: set[int]) -> None:
        segment, lines = self._segment(node)
        claimed.update(lines)
        self.functions[node.name] = _Function(
            node.name, _params(node), _uses(node), _ids(segment + "\n" + node.name),
            node.name.startswith("test"), _is_fixture(node))


def _conftests(path: Path, tests_dir: Path) -> list[Path]:
    """The conftest.py files whose fixtures a test file sees (pytest's scoping)."""
    found = []
    folder = path.parent
    while True:
        candidate = folder / "conftest.py"
        if candidate.exists() and candidate != path:
            found.append(candidate)
        if folder == tests_dir or tests_dir not in folder.parents:
            break
        folder = folder.parent
    return found


def _module_name(path: Path, tests_dir: Path) -> str:
    return ".".join(path.relative_to(tests_dir.parent).with_suffix("").parts)


_Key = tuple[str, str]  # (module, function)


def analyse(tests_dir: Path) -> dict[str, Citation]:
    """Statement id (or ``MQTT 3.1 §x``) -> the test files citing it, wire or unit."""
    return _resolve(tests_dir)[0]


def classify(tests_dir: Path) -> dict[str, tuple[int, int]]:
    """Test file -> (wire tests, unit-level tests): to audit the classification."""
    _, modules, wire = _resolve(tests_dir)
    out = {}
    for name, module in modules.items():
        tests = [fn for fn in module.functions.values() if fn.is_test]
        if tests:
            on_wire = sum((name, fn.name) in wire for fn in tests)
            out[module.rel] = (on_wire, len(tests) - on_wire)
    return out


def _resolve(tests_dir: Path) -> tuple[dict[str, Citation], dict[str, _Module], set[_Key]]:
    # The script's own test quotes ids as data, it does not check them.
    paths = sorted(p for p in tests_dir.rglob("*.py") if p.name != "test_spec_coverage.py")
    modules = {_module_name(p, tests_dir): _Module(p, tests_dir) for p in paths}
    by_path = {m.path: m for m in modules.values()}

    # Which functions reach the wire: a fixpoint over names visible to each module.
    wire: set[tuple[str, str]] = set()  # (module, function)

    def visible(module_name: str) -> dict[str, tuple[str, str]]:
        module = modules[module_name]
        names: dict[str, tuple[str, str]] = {}
        for conftest in reversed(_conftests(module.path, tests_dir)):
            conf = by_path[conftest]
            conf_name = _module_name(conftest, tests_dir)
            for fn in conf.functions.values():
                if fn.is_fixture:
                    names[fn.name] = (conf_name, fn.name)
        for local, (source, name) in module.imports.items():
            if source in modules:
                names[local] = (source, name)
        for fn in module.functions.values():
            names[fn.name] = (module_name, fn.name)
        return names

    scopes = {name: visible(name) for name in modules}

    def callees(module_name: str, fn: _Function) -> Iterator[tuple[tuple[str, str], _Function]]:
        """The functions ``fn`` uses: fixtures it asks for as arguments, helpers and
        classes it names (in its module, imported from ``tests``, or conftest)."""
        scope = scopes[module_name]
        # Only tests and fixtures get fixtures as arguments; a helper's are its own.
        asked = fn.params if fn.is_test or fn.is_fixture else set()
        for name in fn.uses | asked:
            target = scope.get(name)
            if target is None or target == (module_name, fn.name):
                continue
            target_fn = modules[target[0]].functions.get(target[1])
            if target_fn is None or (target_fn.is_fixture and name not in asked):
                continue
            yield target, target_fn

    def reaches_wire(module_name: str, fn: _Function) -> bool:
        if fn.uses & (WIRE_NAMES | modules[module_name].wire_aliases):
            return True
        return any(key in wire for key, _ in callees(module_name, fn))

    changed = True
    while changed:
        changed = False
        for module_name, module in modules.items():
            for fn in module.functions.values():
                key = (module_name, fn.name)
                if key not in wire and reaches_wire(module_name, fn):
                    wire.add(key)
                    changed = True

    # What each function checks: its own citations and those of the helpers and
    # fixtures it uses (a helper that asserts "[MQTT-3.14.4-1] DISCONNECT was the last
    # packet" checks it for every test that calls it).
    effective = {(name, fn.name): set(fn.cites)
                 for name, module in modules.items() for fn in module.functions.values()}
    changed = True
    while changed:
        changed = False
        for module_name, module in modules.items():
            for fn in module.functions.values():
                mine = effective[(module_name, fn.name)]
                before = len(mine)
                for key, _ in callees(module_name, fn):
                    if not fn.is_test and modules[key[0]].functions[key[1]].is_test:
                        continue
                    mine |= effective[key]
                if len(mine) != before:
                    changed = True

    citations: dict[str, Citation] = {}

    def cite(ident: str, on_wire: bool, rel: str) -> None:
        entry = citations.setdefault(ident, Citation())
        (entry.wire if on_wire else entry.unit).add(rel)

    for module_name, module in modules.items():
        rel = module.rel
        if rel.endswith("codec/golden.py"):  # the golden catalogue: asserted in-process
            for ident in module.module_cites.union(*module.constants.values()):
                cite(ident, False, rel)
            continue
        tests = [fn for fn in module.functions.values() if fn.is_test]
        if not tests:
            continue
        all_wire = all((module_name, fn.name) in wire for fn in tests)
        for ident in module.module_cites:
            cite(ident, all_wire, rel)
        for fn in tests:
            on_wire = (module_name, fn.name) in wire
            idents = set(effective[(module_name, fn.name)])
            for name in fn.uses:
                idents |= module.constants.get(name, set())
            for ident in idents:
                cite(ident, on_wire, rel)
    return citations, modules, wire


def load_statements(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summarise(statements: list[dict[str, str]], citations: dict[str, Citation],
              all_binds: bool = False) -> dict[str, dict[str, object]]:
    """Per version: statements, covered on the wire, cited only by unit tests, uncited."""
    out: dict[str, dict[str, object]] = {}
    for version in ("3.1.1", "5.0"):
        rows = [r for r in statements
                if r["version"] == version and (all_binds or r["binds"] in ("Server", "both"))]
        wire = [r["id"] for r in rows if r["id"] in citations and citations[r["id"]].wire]
        unit_only = [r["id"] for r in rows if r["id"] in citations
                     and not citations[r["id"]].wire and citations[r["id"]].unit]
        unit_any = [r["id"] for r in rows if r["id"] in citations and citations[r["id"]].unit]
        out[version] = {
            "statements": len(rows), "wire": len(wire), "unit_only": len(unit_only),
            "unit_cited": len(unit_any),
            "uncited": len(rows) - len(wire) - len(unit_only),
            "unit_only_ids": unit_only,
            "uncited_ids": [r["id"] for r in rows if r["id"] not in citations],
        }
    sections = {key: c for key, c in citations.items() if key.startswith("MQTT 3.1 §")}
    out["3.1"] = {
        "sections_cited": len(sections),
        "wire": sorted(k.removeprefix("MQTT 3.1 ") for k, c in sections.items() if c.wire),
        "unit_only": sorted(k.removeprefix("MQTT 3.1 ") for k, c in sections.items()
                            if not c.wire),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--tests", type=Path, default=ROOT / "tests",
                        help="the tests directory to read (default: this checkout's)")
    parser.add_argument("--missing", action="store_true",
                        help="list the statements not checked on the wire")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--classify", action="store_true",
                        help="list each test file's wire and unit-level test counts")
    parser.add_argument("--all-binds", action="store_true",
                        help="count Client-only statements too")
    args = parser.parse_args(argv)
    if not args.csv.exists():
        print(f"spec list not found: {args.csv}", file=sys.stderr)
        return 2
    if args.classify:
        for rel, (on_wire, unit) in sorted(classify(args.tests).items()):
            print(f"{on_wire:4d} wire {unit:4d} unit  {rel}")
        return 0
    statements = load_statements(args.csv)
    citations = analyse(args.tests)
    figures = summarise(statements, citations, args.all_binds)
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    summaries = {r["id"]: r for r in statements}
    for version in ("3.1.1", "5.0"):
        f = figures[version]
        total = int(str(f["statements"]))
        wire = int(str(f["wire"]))
        pct = 100.0 * wire / total if total else 0.0
        print(f"MQTT {version}: {wire}/{total} server-side statements checked by a test "
              f"against the running broker over a socket ({pct:.0f}%); "
              f"{f['unit_only']} more cited by unit-level tests only "
              f"({f['unit_cited']} cited at unit level in all); {f['uncited']} uncited")
        if args.missing:
            for ident in f["unit_only_ids"]:  # type: ignore[attr-defined]
                files = ", ".join(sorted(citations[ident].unit))
                print(f"  unit only {ident:<16} {summaries[ident]['summary']}  [{files}]")
            for ident in f["uncited_ids"]:  # type: ignore[attr-defined]
                print(f"  uncited   {ident:<16} {summaries[ident]['summary']}")
    v31 = figures["3.1"]
    wire31, unit31 = v31["wire"], v31["unit_only"]
    print(f"MQTT 3.1: {v31['sections_cited']} sections cited (\"MQTT 3.1 §x.y\"): "
          f"{len(wire31)} by wire tests"  # type: ignore[arg-type]
          + (f" ({', '.join(wire31)})" if wire31 else "")  # type: ignore[arg-type]
          + f", {len(unit31)} by unit-level tests only"  # type: ignore[arg-type]
          + (f" ({', '.join(unit31)})" if unit31 else ""))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
