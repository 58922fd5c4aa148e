"""The core's folders are its layers, and imports run one way between them (read from the source, not run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "plugins" / "canary"


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(CORE.rglob("*.py"))}


def offenders(importer_prefixes: tuple[str, ...], imported_prefixes: tuple[str, ...],
              allowed: tuple[str, ...] = ()) -> list[str]:
    def under(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return sorted(f"{mod} imports {imp}" for mod, imps in MODULES.items()
                  if under(mod, importer_prefixes) and not under(mod, allowed)
                  for imp in imps if under(imp, imported_prefixes))


def test_the_layout_is_the_one_the_readme_describes():
    folders = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {"backends", "cli", "devstack", "history", "notify", "policy", "report", "rollout", "serving",
                       "spec", "starts", "stats"}
    loose = sorted(p.name for p in CORE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "airflow_api.py", "errors.py", "progress.py"]


def test_the_core_never_imports_airflow():
    assert offenders(("canary",), ("airflow", "canary_airflow")) == []


@pytest.mark.parametrize(("layer", "forbidden"), [
    # numerics know nothing of where the numbers come from
    ("canary.stats", ("canary.backends", "canary.serving", "canary.rollout", "canary.starts", "canary.devstack",
                      "canary.cli", "canary.airflow_api")),
    # decisions are pure functions of spec and evidence
    ("canary.policy", ("canary.backends", "canary.serving", "canary.rollout", "canary.starts", "canary.devstack",
                       "canary.cli", "canary.airflow_api", "canary.stats")),
    # a spec checks backend names and options against the backends' registry, nothing else of them
    ("canary.spec", ("canary.backends.local_serving", "canary.backends.sagemaker", "canary.serving", "canary.policy", "canary.starts", "canary.devstack",
                     "canary.cli", "canary.airflow_api", "canary.stats")),
    # the history keeps values; it knows no backend, serving layer, rollout step or report
    ("canary.history", ("canary.backends", "canary.serving", "canary.rollout", "canary.starts", "canary.devstack",
                        "canary.cli", "canary.airflow_api", "canary.stats", "canary.notify")),
    # notices are words about decisions: no backend, serving layer or rollout step
    ("canary.notify", ("canary.backends", "canary.serving", "canary.rollout", "canary.starts", "canary.devstack",
                       "canary.cli", "canary.airflow_api", "canary.stats")),
    # the report reads values (records, looks, events): it never reaches a backend or reruns a test
    ("canary.report", ("canary.backends", "canary.serving", "canary.starts", "canary.devstack", "canary.cli",
                       "canary.airflow_api", "canary.stats")),
    ("canary.backends", ("canary.rollout.observe", "canary.rollout.report", "canary.starts", "canary.devstack",
                         "canary.cli", "canary.stats")),
])
def test_a_layer_never_imports_the_layers_above_it(layer, forbidden):
    assert offenders((layer,), forbidden) == []


def test_the_cli_is_a_leaf():
    """Nothing but ``python -m canary`` imports a ``canary`` subcommand's module."""
    assert offenders(("canary",), ("canary.cli",), allowed=("canary.cli", "canary.__main__")) == []


def test_the_checker_sees_lazy_imports(tmp_path):
    """A guard against a checker that passes because it reads nothing."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from airflow.sdk import DAG\n    import canary_airflow.hooks\n")
    assert {"airflow.sdk", "airflow.sdk.DAG", "canary_airflow.hooks"} <= imports_of(probe)
    assert "canary.policy.gate" in MODULES and "canary.spec.model" in MODULES["canary.policy.gate"]
