from pathlib import Path

import pytest

from transfer.outputs import read_json, replaced_together, write_json


def test_a_failed_write_leaves_the_previous_output_and_no_temporary(tmp_path):
    target = tmp_path / "model"
    with replaced_together(target) as (out,):
        out.mkdir()
        (out / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with replaced_together(target) as (out,):
            out.mkdir()
            (out / "weights").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_successful_write_replaces_the_output_whole(tmp_path):
    target = tmp_path / "model"
    with replaced_together(target) as (out,):
        out.mkdir()
        (out / "old_file").write_text("v1")
    with replaced_together(target) as (out,):
        out.mkdir()
        (out / "new_file").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["new_file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_write_json_round_trips_without_leaving_a_temporary(tmp_path):
    write_json(tmp_path / "m" / "x.json", {"a": 1})
    assert read_json(tmp_path / "m" / "x.json") == {"a": 1}
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["x.json"]


def test_outputs_replaced_together_all_or_none(tmp_path):
    folder, table = tmp_path / "model", tmp_path / "metrics.json"
    with replaced_together(folder, table) as (out, metrics):
        out.mkdir()
        (out / "weights").write_text("v1")
        write_json(metrics, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with replaced_together(folder, table) as (out, metrics):
            write_json(metrics, {"v": 2})
            raise KeyboardInterrupt  # Ctrl-C after one output was written
    assert (folder / "weights").read_text() == "v1" and read_json(table) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model"]


def test_disk_full_while_saving_keeps_the_previous_output(workdir, tmp_path, monkeypatch, capsys):
    """The finetune stage runs out of disk while saving its model: one clear error, the previous model and metrics
    untouched, no partial file, and the checkpoints kept so that the next run resumes instead of retraining."""
    import errno
    import shutil

    from stages import finetune
    from transfer import modeling
    from transfer.schema import UserError

    source, params = workdir
    for name in ("data/prepared", "models/pretrained", "models/finetuned", "metrics"):
        shutil.copytree(source / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    before = {path: path.read_bytes() for path in [*Path("models/finetuned").rglob("*"), *Path("metrics").rglob("*")]
              if path.is_file()}

    def disk_full(model, tokenizer, out_dir):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "model.safetensors").write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modeling, "save", disk_full)
    with pytest.raises(UserError, match="disk is full .*models/finetuned.* previous outputs are as they were. "
                                        "Free some space"):
        finetune.main(params)
    after = {path: path.read_bytes() for path in [*Path("models/finetuned").rglob("*"), *Path("metrics").rglob("*")]
             if path.is_file()}
    assert after == before
    assert not list(tmp_path.rglob("*.partial"))
    assert list(Path("checkpoints/finetune").glob("checkpoint-*")), "checkpoints kept for the next run"
