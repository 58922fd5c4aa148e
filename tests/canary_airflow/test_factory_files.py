"""The factory while specs come and go: a spec removed during a parse is gone, never an error for the rest."""

from __future__ import annotations

import yaml
from fast_spec import fast_spec

from canary.spec import model as spec_model
from canary_airflow import factory


def write(tmp_path, *models: str) -> None:
    for m in models:
        (tmp_path / f"{m}.yaml").write_text(yaml.safe_dump(fast_spec(m, f"ep-{m}")))


def test_a_spec_removed_after_the_directory_was_listed_is_skipped(tmp_path, monkeypatch):
    write(tmp_path, "a", "b", "c")
    listed = factory.spec_files(tmp_path)
    (tmp_path / "b.yaml").unlink()  # a test's teardown, or an operator, removes it mid-parse
    monkeypatch.setattr(factory, "spec_files", lambda _directory: listed)
    dags, errors = factory.build_all(tmp_path)
    assert sorted(dags) == ["canary_rollout__a", "canary_rollout__c"] and errors == []


def test_each_spec_file_is_read_once_per_parse(tmp_path, monkeypatch):
    """Read twice, a file removed between the two reads raised out of build_all and hid every DAG."""
    write(tmp_path, "a", "b")
    reads: list[str] = []
    real = spec_model.load_spec

    def counting(path):
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(factory, "load_spec", counting)
    dags, errors = factory.build_all(tmp_path)
    assert sorted(dags) == ["canary_rollout__a", "canary_rollout__b"] and errors == []
    assert sorted(reads) == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]


def test_an_unreadable_spec_that_still_exists_is_an_error_and_the_others_load(tmp_path):
    write(tmp_path, "a")
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    dags, errors = factory.build_all(tmp_path)
    assert sorted(dags) == ["canary_rollout__a"]
    assert [e.path for e in errors] == [str(tmp_path / "broken.yaml")] and "not valid YAML" in str(errors[0])
