"""Corpus loaders on tiny fixtures in each dataset's exact layout (tests/fixtures/data_*)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, detect_format, load_table, read_audio
from training.data.folder import TABLE_NAMES

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def _tags_of(t, i: int) -> set[str]:
    return {tag for tag, v in zip(t.tags, t.labels[i], strict=True) if v}


def _decodes_all(t) -> None:
    for i in range(len(t)):
        audio = read_audio(t.audio_path(i), 16000)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) - 4800) <= 5  # 0.3 s at 16 kHz, whatever the file's own rate
        assert np.abs(audio).max() > 0.05


def test_folder_csv_with_tag_lists():
    t = load_table(FIX / "data_folder_csv")
    assert t.format == "folder" and len(t) == 3
    assert t.tags == ["bass", "drums", "fast", "piano", "slow"]
    assert t.labels.dtype == np.uint8 and t.labels.shape == (3, 5)
    assert _tags_of(t, 1) == {"drums", "fast", "bass"}
    assert t.split == ["train", "valid", "test"]
    assert t.meta["style"] == ["classical", "rock", "jazz"]
    _decodes_all(t)


def test_folder_tsv_one_hot_columns():
    t = load_table(FIX / "data_folder_onehot")
    assert t.tags == ["guitar", "vocals"]
    assert t.labels.tolist() == [[1, 0], [1, 1]]
    assert t.split is None and t.meta == {"artist": ["anon", "anon"]}
    _decodes_all(t)


def test_mtat_layout():
    t = load_table(FIX / "data_mtat")
    assert t.format == "mtat" and len(t) == 4
    assert t.tags == ["no voice", "singer", "harpsichord", "classical", "guitar", "techno"]
    assert t.split == ["test", "train", "valid", "train"]  # folders f, 0, c, 0
    assert _tags_of(t, 0) == {"no voice", "harpsichord", "classical"}
    assert t.meta["clip_id"] == ["2", "6", "10", "12"]
    top = load_table(FIX / "data_mtat", top_n=2)
    assert top.tags == ["no voice", "guitar"]  # the two most frequent, in table order
    _decodes_all(t)


def test_jamendo_layout_with_low_quality_files_and_splits():
    t = load_table(FIX / "data_jamendo")
    assert t.format == "jamendo" and len(t) == 3
    assert "genre---punkrock" in t.tags and "mood/theme---calm" in t.tags
    by_id = dict(zip(t.meta["track_id"], range(len(t)), strict=True))
    assert _tags_of(t, by_id["track_0000215"]) == {"genre---metal", "genre---punkrock"}
    assert t.paths[by_id["track_0000215"]] == "15/215.low.mp3"
    assert sorted(t.split) == ["train", "train", "valid"]
    _decodes_all(t)


def test_folder_per_class():
    t = load_table(FIX / "data_classes")
    assert t.format == "classes" and t.tags == ["drums", "piano"]
    assert sorted(t.paths) == ["drums/d1.ogg", "piano/p1.wav", "piano/sub/p2.flac"]
    assert t.labels.sum(axis=1).tolist() == [1, 1, 1]
    _decodes_all(t)


def test_unlabelled_folder():
    t = load_table(FIX / "data_unlabelled")
    assert t.format == "unlabelled" and not t.labelled
    assert t.paths == ["album/two.ogg", "one.flac"] and t.labels.shape == (2, 0)
    _decodes_all(t)


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("data_folder_csv", "folder"),
        ("data_folder_onehot", "folder"),
        ("data_mtat", "mtat"),
        ("data_jamendo", "jamendo"),
        ("data_classes", "classes"),
        ("data_unlabelled", "unlabelled"),
    ],
)
def test_detect_format(name, fmt):
    assert detect_format(FIX / name) == fmt


# --- bad inputs: one clear line naming the file or row -------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_audio_referenced_by_table(tmp_path):
    d = _copy("data_folder_csv", tmp_path)
    (d / "audio/b.flac").unlink()
    with pytest.raises(DataError) as e:
        load_table(d)
    msg = _one_line(e)
    assert "line 3" in msg and "b.flac" in msg


def test_missing_audio_mtat_and_jamendo(tmp_path):
    d = _copy("data_mtat", tmp_path)
    next((d / "c").glob("*.mp3")).unlink()
    with pytest.raises(DataError, match=r"clip 10.*missing"):
        load_table(d)
    d = _copy("data_jamendo", tmp_path)
    (d / "audio/00/900.mp3").unlink()
    with pytest.raises(DataError, match=r"track_0000900.*missing.*900\.mp3"):
        load_table(d)


def test_unreadable_audio(tmp_path):
    d = _copy("data_folder_csv", tmp_path)
    (d / "audio/a.wav").write_bytes(b"RIFF not really a wave file")
    t = load_table(d)  # the table is fine; decoding the file is not
    with pytest.raises(DataError) as e:
        read_audio(t.audio_path(0), 16000)
    assert "unreadable" in _one_line(e) and "a.wav" in str(e.value)


def test_empty_tags(tmp_path):
    d = _copy("data_folder_csv", tmp_path)
    (d / "tags.csv").write_text("path,tags\naudio/a.wav,piano\naudio/c.ogg,\n")
    with pytest.raises(DataError, match=r"line 3 \(audio/c.ogg\): empty tags"):
        load_table(d)
    d = _copy("data_folder_onehot", tmp_path)
    (d / "labels.tsv").write_text("file\tguitar\tvocals\nx.wav\t0\t0\ny.flac\t0\t\n")
    with pytest.raises(DataError, match="every tag column is empty"):
        load_table(d)
    d = _copy("data_jamendo", tmp_path)
    text = (
        (d / "autotagging.tsv")
        .read_text()
        .replace("\tgenre---ambient\tinstrument---piano\tmood/theme---calm", "")
    )
    (d / "autotagging.tsv").write_text(text)
    with pytest.raises(DataError, match="track_0000900.*empty tag columns"):
        load_table(d)


def test_unknown_format(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match="unknown corpus format"):
        load_table(tmp_path)
    with pytest.raises(DataError, match="unknown corpus format 'nope'"):
        load_table(FIX / "data_classes", format="nope")
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "absent")


# --- layouts a user's own music comes in ---------------------------------------------------------


def test_folder_per_class_with_split_folders(tmp_path):
    for split, cls in (("train", "drums"), ("train", "piano"), ("valid", "piano"), ("test", "drums")):
        shutil.copytree(FIX / "data_classes" / cls, tmp_path / split / cls, dirs_exist_ok=True)
    assert detect_format(tmp_path) == "classes"
    t = load_table(tmp_path)
    assert t.tags == ["drums", "piano"] and len(t) == 6
    assert sorted(t.split) == ["test"] + ["train"] * 3 + ["valid"] * 2
    assert {p.split("/")[0] for p in t.paths} == {"train", "valid", "test"}
    assert all(t.labels[i].sum() == 1 for i in range(len(t)))


def test_a_table_with_another_name_is_used_and_said(tmp_path):
    d = _copy("data_folder_onehot", tmp_path)
    (d / "labels.tsv").rename(d / "my_tags.tsv")
    assert detect_format(d) == "folder"
    t = load_table(d)
    assert t.tags == ["guitar", "vocals"] and len(t) == 2
    assert t.notes == [f"tags table my_tags.tsv used (not a standard name: {', '.join(TABLE_NAMES)})"]


def test_class_folders_say_which_tables_they_ignore(tmp_path):
    d = _copy("data_classes", tmp_path)
    (d / "notes.csv").write_text("path,comment\ndrums/d1.ogg,x\n")
    (d / "other.csv").write_text("path,comment\npiano/p1.wav,y\n")  # two candidates: no guessing
    t = load_table(d)
    assert t.format == "classes"
    assert sorted(t.notes) == [
        "notes.csv ignored: a tags table must be named tags.csv (or pass the table itself)",
        "other.csv ignored: a tags table must be named tags.csv (or pass the table itself)",
    ]


def test_features_output_is_refused_as_a_corpus(tmp_path):
    (tmp_path / "feats").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match="is `rt-tagger features` output") as e:
        detect_format(tmp_path)
    _one_line(e)


def test_usable_tags_leave_out_constant_and_rare_columns():
    from training.data import TrackTable
    from training.data_check import usable_tags

    labels = np.array([[1, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    t = TrackTable(Path("."), [f"{i}.wav" for i in range(5)], ["all", "none", "ok", "rare"], labels)
    keep, warnings = usable_tags(t, min_tracks=3)
    assert keep == ["ok"]
    assert warnings == [
        "tag 'all' is on every track (nothing to tell apart): left out",
        "tag 'none' is on no track (an empty column): left out",
        "tag 'rare' has 2 track(s), fewer than data.min_tracks_per_tag = 3: left out",
    ]


def test_carve_is_stratified_and_disjoint():
    from training.labelled import carve

    labels = np.zeros((30, 3), np.float32)
    labels[np.arange(30), [0] * 20 + [1] * 7 + [2] * 3] = 1
    rest, held = carve(np.arange(30), 0.2, labels, seed=0)
    assert len(np.intersect1d(rest, held)) == 0 and len(rest) + len(held) == 30
    assert [int(labels[held, j].sum()) for j in range(3)] == [4, 1, 1]  # every class on both sides
