from __future__ import annotations

import json
import multiprocessing

import pytest

from canary.backends import build_backend
from canary.backends.base import ConnInfo, ModelRegistry
from canary.backends.local_registry import LocalModelRegistry
from canary.errors import ConfigError, UnknownVersionError


@pytest.fixture
def path(tmp_path):
    return tmp_path / "registry.json"


@pytest.fixture
def reg(path) -> LocalModelRegistry:
    r = build_backend("registry", "local", ConnInfo(conn_id="t", extra={"path": str(path)}))
    for v in ("1", "2", "3"):
        r.register_version("m", v)
    r.set_alias("m", "champion", "1")
    r.set_alias("m", "challenger", "3")
    return r


def test_implements_the_protocol(reg):
    assert isinstance(reg, ModelRegistry)


def test_resolve_versions_and_aliases(reg):
    assert reg.resolve("m", "2") == "2"
    assert reg.resolve("m", "challenger") == "3"
    assert reg.champion("m") == "1"
    assert reg.list_versions("m") == ["1", "2", "3"]
    with pytest.raises(UnknownVersionError, match=r"no version or alias '9' \(known: 1, 2, 3, challenger, champion\)"):
        reg.resolve("m", "9")
    with pytest.raises(UnknownVersionError, match="'other' is not registered"):
        reg.resolve("other", "1")
    assert reg.champion("other") is None


def test_promote_moves_champion_tags_and_records_history(reg):
    reg.promote("m", "2", run_id="run-1", summary={"retired": "1"})
    assert reg.champion("m") == "2"
    tags = reg.get_tags("m", "2")
    assert tags["rollout.result"] == "promoted" and tags["rollout.run_id"] == "run-1"
    assert json.loads(tags["rollout.summary"]) == {"retired": "1"}
    assert reg.get_tags("m", "3") == {}  # other versions untouched
    (event,) = reg.history("m")
    assert event["previous_champion"] == "1" and event["version"] == "2"


def test_the_summary_tag_leaves_out_the_gate_s_evidence(reg):
    # The evidence (every metric's numbers) belongs in a run's metrics, not in a tag (MLflow caps tag values).
    evidence = {"stage": 1, "metrics": [{"metric": "error_rate", "decision": "rollback",
                                         "evidence": {"e_value": 1.3e4, "ratio_lower": 1.2}}] * 50}
    reg.record_rollback("m", "3", run_id="run-2", reason="error_rate: ...", summary={"stable": "1", **evidence})
    assert json.loads(reg.get_tags("m", "3")["rollout.summary"]) == {"stable": "1"}


def test_rollback_tags_reason_and_keeps_champion(reg):
    reg.record_rollback("m", "3", run_id="run-2", reason="error_rate: e-value 400 >= 40", summary={"n": 5})
    assert reg.champion("m") == "1"
    tags = reg.get_tags("m", "3")
    assert tags["rollout.result"] == "rolled_back" and "e-value" in tags["rollout.reason"]
    with pytest.raises(UnknownVersionError):
        reg.record_rollback("m", "9", run_id="r", reason="x", summary={})


def test_bad_configuration_is_named():
    with pytest.raises(ConfigError, match="extra.path"):
        LocalModelRegistry(ConnInfo(conn_id="reg"))
    with pytest.raises(ConfigError, match="no options"):
        LocalModelRegistry(ConnInfo(conn_id="reg", extra={"path": "/tmp/x.json"}), endpoint="e")


def _register_many(path: str, worker: int) -> None:
    r = LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": path}))
    for i in range(25):
        r.register_version("m", f"w{worker}-{i}")


def test_concurrent_writers_lose_nothing(path):
    procs = [multiprocessing.get_context("fork").Process(target=_register_many, args=(str(path), w))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    versions = LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": str(path)})).list_versions("m")
    assert len(versions) == 100 and len(set(versions)) == 100


def test_alias_version(reg):
    assert reg.alias_version("m", "challenger") == "3"
    assert reg.alias_version("m", "champion") == "1"
    assert reg.alias_version("m", "canary") is None
    assert reg.alias_version("other", "challenger") is None
    reg.set_alias("m", "challenger", "2")
    assert reg.alias_version("m", "challenger") == "2"
