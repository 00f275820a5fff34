"""prepare_dataset.py against a hostile `.prepare_state.json` and folders of looping links.

The state file travels with a shared dataset folder, so it is input like any other: every name
in it must stay inside the output folder, and a file is removed or replaced only while its bytes
are what this tool wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from pokedex_trainer.cli.commands import prepare_main, run_main
from pokedex_trainer.data.synthetic import write_dataset

STATE = ".prepare_state.json"


def _argv(raw: Path, out: Path) -> list[str]:
    return ["--input_dir", str(raw), "--output_dir", str(out), "--size", "32", "--workers", "0"]


@pytest.fixture
def prepared(tmp_path):
    """(raw folder, output folder) after one clean run: Gato and Perro, 3 images each."""
    raw = write_dataset(tmp_path / "raw", classes=("Gato", "Perro"), per_class=3,
                        size=(48, 48), seed=5)
    out = tmp_path / "deep" / "training"
    assert run_main(prepare_main, _argv(raw, out)) == 0
    return raw, out


def _state(out: Path) -> dict:
    return json.loads((out / STATE).read_text(encoding="utf-8"))


def _save_state(out: Path, state) -> None:
    (out / STATE).write_text(json.dumps(state), encoding="utf-8")


def _no_traceback(capsys, caplog=None) -> str:
    """What the user saw on stderr, warnings included (the console handler of the first test
    keeps that test's stderr: caplog holds the records)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err + ("\n" + caplog.text if caplog is not None else "")


def test_written_names_outside_the_output_folder_are_never_deleted(prepared, tmp_path, capsys,
                                                                   caplog):
    raw, out = prepared
    victims = [tmp_path / "x.txt", tmp_path / "absolute.txt", tmp_path / "nul.txt"]
    for victim in victims:
        victim.write_text("the user's")
    state = _state(out)
    written = state["written"] if isinstance(state["written"], list) else list(state["written"])
    written += ["../../x.txt", str(tmp_path / "absolute.txt"), "Gato/../../../x.txt",
                "C:\\x.txt", "Gato/x\x00.jpg"]
    state["written"] = written
    _save_state(out, state)
    (raw / "Gato" / "Gato_0000.jpg").unlink()  # a re-run that removes stale outputs
    assert run_main(prepare_main, _argv(raw, out)) == 0
    for victim in victims:
        assert victim.read_text() == "the user's"
    err = _no_traceback(capsys, caplog)
    assert "5 entries" in err and "ignored" in err
    assert not (out / "Gato" / "Gato_0000.jpg").exists()  # its own stale output still goes


@pytest.mark.parametrize("escape", ["Gato/../../../x.jpg", "Gato/../../x.jpg"])
def test_a_source_mapped_outside_the_output_folder_writes_nothing_there(prepared, tmp_path,
                                                                       capsys, caplog, escape):
    raw, out = prepared
    target = (out / escape).resolve()
    target.write_bytes(b"the user's photo")
    state = _state(out)
    entry = state["files"]["Gato/Gato_0000.jpg"]
    entry["output"] = escape
    entry["sha256"] = "0" * 64  # as if the source had changed: it is converted again
    _save_state(out, state)
    assert run_main(prepare_main, _argv(raw, out)) == 0
    assert target.read_bytes() == b"the user's photo"
    assert not (tmp_path / "Gato").exists()
    assert len(list((out / "Gato").glob("*.jpg"))) == 3
    assert "ignored" in _no_traceback(capsys, caplog)


def test_a_state_that_gives_two_sources_one_output_keeps_both_images(prepared):
    raw, out = prepared
    state = _state(out)
    first = state["files"]["Gato/Gato_0000.jpg"]
    state["files"]["Gato/Gato_0001.jpg"] = {**first, "sha256": "0" * 64}
    _save_state(out, state)
    assert run_main(prepare_main, _argv(raw, out)) == 0
    outputs = [entry["output"] for entry in _state(out)["files"].values()]
    assert len(set(outputs)) == len(outputs) == 6
    assert len({p.read_bytes() for p in (out / "Gato").glob("*.jpg")}) == 3


def test_a_class_folder_linked_outside_is_not_written_through(prepared, tmp_path):
    raw, out = prepared
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "Gato_0001.jpg").write_bytes(b"not the tool's")
    for path in (out / "Gato").iterdir():
        path.unlink()
    (out / "Gato").rmdir()
    (out / "Gato").symlink_to(elsewhere, target_is_directory=True)
    (raw / "Gato" / "Gato_0001.jpg").unlink()  # its recorded output becomes stale
    state = _state(out)
    state["files"]["Gato/Gato_0002.jpg"]["sha256"] = "0" * 64
    _save_state(out, state)
    assert run_main(prepare_main, _argv(raw, out)) in (0, 2)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["Gato_0001.jpg"]
    assert (elsewhere / "Gato_0001.jpg").read_bytes() == b"not the tool's"


def test_an_output_the_user_edited_is_neither_deleted_nor_replaced(prepared):
    raw, out = prepared
    state = _state(out)
    # an older state file: no hash of the outputs at all, and a name only in the written list
    for entry in state["files"].values():
        entry.pop("output_sha256", None)
    del state["files"]["Perro/Perro_0002.jpg"]
    state.pop("version", None)
    state["written"] = sorted(state["written"])
    _save_state(out, state)
    edited = {name: f"edited {name}".encode() for name in
              ("Gato/Gato_0000.jpg", "Gato/Gato_0001.jpg", "Perro/Perro_0002.jpg")}
    for name, data in edited.items():
        (out / name).write_bytes(data)
    (raw / "Gato" / "Gato_0000.jpg").unlink()  # stale: its output was edited
    (raw / "Perro" / "Perro_0002.jpg").unlink()  # stale: its output is only in "written"
    write_dataset(raw.parent / "other", classes=("Gato",), per_class=2, size=(48, 48), seed=77)
    (raw / "Gato" / "Gato_0001.jpg").write_bytes(
        (raw.parent / "other" / "Gato" / "Gato_0001.jpg").read_bytes())  # changed source
    assert run_main(prepare_main, _argv(raw, out)) == 0
    for name, data in edited.items():
        assert (out / name).read_bytes() == data


def test_a_new_state_records_the_hash_of_every_file_written(prepared):
    raw, out = prepared
    state = _state(out)
    written = state["written"]
    assert isinstance(written, dict) and len(written) == 6
    for name, digest in written.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


MALFORMED = {
    "a list": "[1, 2, 3]",
    "bad JSON": "{\"settings\": ",
    "huge nesting": "[" * 200_000 + "]" * 200_000,
    "numbers for strings": json.dumps({"settings": 5, "files": {"Gato/Gato_0000.jpg": 3,
                                                                "Perro/Perro_0000.jpg": {
                                                                    "sha256": 1, "output": 2}},
                                       "written": [1, 2.5, None]}),
    "wrong containers": json.dumps({"settings": [], "files": [], "written": "Gato"}),
    "not UTF-8": b"\xff\xfe{".decode("latin-1"),
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_state_file_is_a_warning_or_one_line_never_a_traceback(prepared, capsys,
                                                                         caplog, case):
    raw, out = prepared
    before = {p: p.read_bytes() for p in out.rglob("*.jpg")}
    (out / STATE).write_text(MALFORMED[case], encoding="latin-1")
    code = run_main(prepare_main, _argv(raw, out))
    err = _no_traceback(capsys)
    assert code in (0, 2)
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("error: ")
    err += caplog.text
    assert "prepare_state" in err
    for path, data in before.items():  # nothing it cannot prove its own is removed
        assert path.read_bytes() == data


def test_a_malformed_reports_record_is_no_traceback(prepared, capsys):
    raw, out = prepared
    (out / ".prepare_reports.json").write_text("[" * 100_000 + "]" * 100_000)
    assert run_main(prepare_main, _argv(raw, out)) == 0
    _no_traceback(capsys)
    (out / ".prepare_reports.json").write_text("[1, 2]")
    assert run_main(prepare_main, _argv(raw, out)) == 0
    _no_traceback(capsys)


@pytest.fixture
def looping(tmp_path) -> Path:
    """A folder of 25 links to itself and one to its parent: no image anywhere."""
    folder = tmp_path / "parent" / "loop"
    folder.mkdir(parents=True)
    for i in range(25):
        (folder / f"link{i:02d}").symlink_to(".", target_is_directory=True)
    (folder / "up").symlink_to("..", target_is_directory=True)
    return folder


@pytest.fixture
def counted_listings(monkeypatch):
    """Counts the folder listings of the archive search; stops a walk that explodes."""
    import pokedex_trainer.data.archives as archive

    calls = {"n": 0}

    class CountingOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def scandir(path="."):
            calls["n"] += 1
            if calls["n"] > 5000:
                raise AssertionError("the folder walk does not end: links followed in circles")
            return os.scandir(path)

    monkeypatch.setattr(archive, "os", CountingOs())
    yield calls


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges")
def test_a_folder_of_links_to_itself_ends_with_no_images_found(looping, tmp_path, capsys,
                                                               counted_listings):
    code = run_main(prepare_main, _argv(looping, tmp_path / "out"))
    assert code == 2
    assert "no images found" in _no_traceback(capsys).strip().splitlines()[-1]
    assert counted_listings["n"] <= 200  # each real folder once, not 25 ** depth times


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges")
def test_the_trainer_scan_of_a_folder_of_links_to_itself_ends(looping, counted_listings):
    from pokedex_trainer.data.scan import scan_dataset
    from pokedex_trainer.errors import UserError

    with pytest.raises(UserError, match="no images found"):
        scan_dataset(looping)
    assert counted_listings["n"] <= 200


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges")
def test_the_archive_search_does_not_follow_a_link_out_of_the_input_folder(tmp_path, capsys,
                                                                          caplog,
                                                                          counted_listings):
    outside = write_dataset(tmp_path / "elsewhere" / "raw-img", classes=("cane", "gatto"),
                            per_class=2, size=(40, 40))
    given = tmp_path / "given"
    given.mkdir()
    (given / "archive").symlink_to(outside.parent, target_is_directory=True)
    (given / "root").symlink_to("/", target_is_directory=True)
    assert run_main(prepare_main, _argv(given, tmp_path / "out")) == 2
    err = _no_traceback(capsys)
    assert "no images found" in err.strip().splitlines()[-1]
    err += caplog.text
    assert "outside" in err and "archive" in err  # the link not followed is named
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["pipe", "device"])
def test_a_state_file_that_is_a_pipe_or_a_device_is_one_line(prepared, capsys, kind):
    """A named pipe would block prepare forever, /dev/zero would fill the memory."""
    raw, out = prepared
    (out / STATE).unlink()
    if kind == "pipe":
        os.mkfifo(out / STATE)
    else:
        (out / STATE).symlink_to("/dev/zero")
    assert run_main(prepare_main, _argv(raw, out)) == 2
    err = _no_traceback(capsys)
    assert "not a regular file" in err and STATE in err


def test_a_users_file_named_like_a_temporary_file_is_kept(prepared):
    """Only prepare's own leftovers of a killed write (mkstemp's names, mode 0600) go."""
    raw, out = prepared
    notes = out / "Gato" / ".Gato_0000.jpg.notes.tmp"
    notes.write_text("my notes")
    assert run_main(prepare_main, _argv(raw, out)) == 0
    assert notes.read_text() == "my notes"
    leftover = out / "Gato" / ".Gato_0000.jpg.k3x_9q2a.tmp"  # what a killed write leaves
    leftover.write_bytes(b"half a jpeg")
    leftover.chmod(0o600)
    assert run_main(prepare_main, _argv(raw, out)) == 0
    assert not leftover.exists() and notes.exists()
