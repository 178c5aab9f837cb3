"""atomic_write: the target is the old file or the new one, never a partial one, and no temp is left."""

import pytest

from tokensft.core.fileio import atomic_write


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("new")
        assert path.read_text() == "old"  # not visible before the rename
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(type(error)):
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("half")
            raise error
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_exchange_dirs_swaps_whole_directories(tmp_path):
    from tokensft.core.fileio import exchange_dirs

    current, new = tmp_path / "data", tmp_path / ".data.new"
    current.mkdir()
    new.mkdir()
    (current / "a").write_text("old")
    (new / "a").write_text("new")
    (new / "b").write_text("only new")
    exchange_dirs(new, current)
    assert (current / "a").read_text() == "new" and (current / "b").is_file()
    assert (new / "a").read_text() == "old" and not (new / "b").exists()
