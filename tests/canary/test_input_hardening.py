"""Input hardening, checked on the source and on the models: YAML is loaded safely, no shell is built,
secrets are compared in constant time, and nothing a spec or a run conf says becomes a file path that
could leave the project's folders."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from fast_spec import fast_spec

from canary.errors import SpecError
from canary.spec.model import RolloutSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "plugins").rglob("*.py"), *(ROOT / "dags").rglob("*.py")])
#: Names that hold secrets (or values derived from them, like a signature).
SECRET_NAME = re.compile(r"token|secret|password|passwd|signature|digest|api_key|credential", re.IGNORECASE)
#: Comparisons with a secret-looking name that compare no secret (a protocol's version prefix).
NOT_SECRET = {("mlflow_webhooks.py", "version != SIGNATURE_VERSION")}
#: Field names that would make a spec or run conf value a file path.
PATH_LIKE = re.compile(r"path|dir$|dir_|directory|file|folder|suite|location", re.IGNORECASE)


def trees():
    for path in SOURCES:
        yield path, ast.parse(path.read_text(), filename=str(path))


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def calls():
    for path, tree in trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path, node, dotted(node.func)


def test_the_scan_sees_the_source():
    assert len(SOURCES) > 50 and any(p.name == "app.py" for p in SOURCES)


SAFE_LOADERS = ("yaml.SafeLoader", "yaml.CSafeLoader")


def safe_subclasses(path: Path) -> set[str]:
    """Return the loader classes defined in ``path`` that subclass a safe loader directly."""
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            and any(dotted(base) in SAFE_LOADERS for base in node.bases)}


def test_yaml_is_loaded_safely_everywhere():
    unsafe = []
    for path, node, name in calls():
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            unsafe.append(f"{path}:{node.lineno} {name}")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), node.args[1] if len(node.args) > 1 else None)
            if loader is None or dotted(loader) not in (*SAFE_LOADERS, *safe_subclasses(path)):
                unsafe.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert unsafe == []


def test_no_shell_is_built_anywhere():
    found = []
    for path, node, name in calls():
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn"):
            found.append(f"{path}:{node.lineno} {name}")
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"{path}:{node.lineno} shell=")
        if name.startswith("subprocess.") and node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr):
            found.append(f"{path}:{node.lineno} a command line as one string")
    assert found == []


def test_secrets_are_never_compared_with_equality():
    def name(node: ast.AST) -> str:
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            return str(node.slice.value)
        if isinstance(node, ast.Call):
            return name(node.func)
        return dotted(node).rsplit(".", 1)[-1]

    found = []
    for path, tree in trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                if any(SECRET_NAME.search(name(side)) for side in (node.left, *node.comparators)) \
                        and (path.name, ast.unparse(node)) not in NOT_SECRET:
                    found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert found == [], "compare secrets with secrets.compare_digest / hmac.compare_digest"


#: (model, field) of the spec's path-like fields, each confined to its folder (tested below).
CONFINED = {("LocalLockOptions", "path")}


def field_names(schema: dict) -> set[tuple[str, str]]:
    names = set()
    for title, definition in [(schema.get("title", ""), schema), *schema.get("$defs", {}).items()]:
        names |= {(title, name) for name in definition.get("properties", {})}
    return names


def test_every_path_like_spec_field_is_confined():
    from canary.backends.options import BACKEND_OPTIONS
    from canary.notify.options import NOTIFIER_OPTIONS

    models = [RolloutSpec, *(m for per_role in BACKEND_OPTIONS.values() for m in per_role.values()),
              *NOTIFIER_OPTIONS.values()]
    names = set().union(*(field_names(m.model_json_schema(by_alias=True)) for m in models))
    assert len(names) > 50
    # Stores, registry files, report and spec folders come from Airflow connections and the deployment's
    # environment; a path a spec may give must be confined (and listed in CONFINED) first.
    assert {n for n in names if PATH_LIKE.search(n[1])} == CONFINED


@pytest.mark.parametrize("path", ["../escape.db", "/etc/leases.db", "~/leases.db", "a/../../b.db", "./x.db",
                                  "C:/x.db", "..\\x.db", ""])
def test_a_lock_path_outside_the_lock_folder_is_refused_naming_the_field(path):
    data = fast_spec("m", "e", backends={"lock": {"name": "local", "options": {"path": path}}})
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert [loc for loc, _ in err.value.problems] == ["backends.lock.options.path"], err.value.problems


@pytest.mark.parametrize("path", ["leases.db", "team/leases.db"])
def test_a_relative_lock_path_is_a_file_in_the_lock_folder(monkeypatch, tmp_path, path):
    from canary.backends.local_lock import LocalEndpointLock

    monkeypatch.setenv("CANARY_LOCK_PATH", str(tmp_path / "locks" / "canary_locks.db"))
    spec = parse_spec(fast_spec("m", "e", backends={"lock": {"name": "local", "options": {"path": path}}}))
    kwargs = spec.backends.typed_options("lock").constructor_kwargs()
    lock = LocalEndpointLock(**kwargs)
    assert lock.path == tmp_path / "locks" / path


def test_no_run_conf_param_is_a_file_path():
    from canary_airflow.factory import rollout_params

    spec = parse_spec(fast_spec("m", "e"))
    params = rollout_params(spec)
    assert set(params) == {"version", "stages", "dry_run", "approval", "reason"}
    assert [n for n in params if PATH_LIKE.search(n)] == []


@pytest.mark.parametrize("name", ["../etc", "a/../../b", "/abs", "..", ".hidden", "a/b", "a\\b"])
@pytest.mark.parametrize("field", ["model", "endpoint"])
def test_names_that_become_path_parts_cannot_escape(name, field):
    data = fast_spec("m", "e")
    data[field] = name
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any(loc == field for loc, _ in err.value.problems), err.value.problems


@pytest.mark.parametrize("run_id", ["../../escape", "/etc/passwd", "manual__2027-01-15T08:00:00+00:00", ".."])
def test_a_report_stays_in_its_folder_whatever_the_run_id(tmp_path, run_id):
    from canary.rollout.report import write_report

    report = {"model": "m", "run_id": run_id, "outcome": "promoted", "reason": "r", "candidate": "v2",
              "stable": "v1", "timeline": [], "stages_planned": [100]}
    try:
        paths = write_report(report, tmp_path)
    except (KeyError, TypeError, ValueError):  # a report the Markdown renderer cannot draw: nothing written
        paths = list(tmp_path.rglob("*"))
    for path in paths:
        assert Path(path).resolve().is_relative_to(tmp_path.resolve() / "m"), path
    assert json.dumps(sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()))
