"""The atomic writer keeps the kind of what it writes to: a symlink's target is replaced (the link stays a link),
a device or FIFO is refused by name, a new file gets ordinary permissions and an existing one keeps its mode."""

from __future__ import annotations

import os
import stat

import pytest

from medssr.storage import StorageError, atomic_writer, write_text


def test_writing_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.jsonl"
    target.write_text("old\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["out.jsonl"]  # the temp file was beside the target


def test_a_link_to_a_link_and_a_dangling_link_write_the_final_target(tmp_path):
    final = tmp_path / "final.txt"
    (tmp_path / "middle").symlink_to(final)
    (tmp_path / "first").symlink_to(tmp_path / "middle")
    write_text(tmp_path / "first", "x")  # final.txt does not exist yet: the dangling chain is created at its end
    assert final.read_text() == "x"
    assert (tmp_path / "first").is_symlink() and (tmp_path / "middle").is_symlink()


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_a_character_device_is_refused_without_a_temp_file_beside_it(device):
    before = set(os.listdir("/dev"))
    with pytest.raises(StorageError, match=f"cannot write {device}: it is a character device, not a regular file"):
        with atomic_writer(device) as handle:
            handle.write("never written")
    assert set(os.listdir("/dev")) - before == set()
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_fifo_and_a_link_to_a_device_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="it is a FIFO"):
        write_text(fifo, "x")
    link = tmp_path / "full"
    link.symlink_to("/dev/full")
    with pytest.raises(StorageError, match=r"\(a link to /dev/full\): it is a character device"):
        write_text(link, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "pipe"]


def test_a_folder_in_the_way_is_refused_by_name(tmp_path):
    (tmp_path / "out.jsonl").mkdir()
    with pytest.raises(StorageError, match="out.jsonl: it is a folder, not a regular file"):
        write_text(tmp_path / "out.jsonl", "x")


def test_a_new_file_gets_0666_less_the_umask_and_an_existing_file_keeps_its_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o640  # not mkstemp's 0600
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o604)
    write_text(kept, "new")
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604 and kept.read_text() == "new"

