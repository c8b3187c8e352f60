import pytest

from stages.outputs import atomic_dir, read_json, write_json


def test_a_failed_write_leaves_the_previous_output_and_no_temporary(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as out:
        (out / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as out:
            (out / "weights").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_successful_write_replaces_the_output_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as out:
        (out / "old_file").write_text("v1")
    with atomic_dir(target) as out:
        (out / "new_file").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["new_file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_write_json_round_trips_without_leaving_a_temporary(tmp_path):
    write_json(tmp_path / "m" / "x.json", {"a": 1})
    assert read_json(tmp_path / "m" / "x.json") == {"a": 1}
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["x.json"]
