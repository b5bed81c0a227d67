"""Corpus loaders on tiny fixtures in each dataset's exact layout (tests/fixtures/data_*)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, detect_format, load_table, read_audio

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
