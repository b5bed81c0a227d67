"""Tag groups in the manifest: optional, one per tag, from a fixed set, at most one music gate."""

import json

import pytest

from engines.bundle import TAG_GROUPS, Bundle, BundleError, seal_bundle
from tests.conftest import TAGS, make_random_bundle
from tests.rt_tagger.conftest import run_cli


@pytest.fixture
def bundle(tmp_path):
    return make_random_bundle(tmp_path / "b")


def _with_groups(bundle, groups) -> None:
    path = bundle.path / "manifest.json"
    m = json.loads(path.read_text())
    m["groups"] = groups
    path.write_text(json.dumps(m))


def test_groups_default_to_other_and_no_music_head(bundle):
    b = Bundle.load(bundle.path)
    assert b.manifest.tag_groups == ["other"] * len(TAGS) and b.manifest.music_index is None


def test_groups_and_music_head_read(bundle):
    groups = ["instrument"] * (len(TAGS) - 1) + ["music"]
    _with_groups(bundle, groups)
    with pytest.raises(BundleError, match="manifest digest mismatch"):  # an edit is refused until sealed
        Bundle.load(bundle.path)
    m = seal_bundle(bundle.path).manifest
    assert m.tag_groups == groups and m.music_index == len(TAGS) - 1
    assert set(groups) <= set(TAG_GROUPS)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (["instrument"] * (len(TAGS) - 1) + ["colour"], r"groups\.\d+: Input should be 'instrument'"),
        (["instrument"] * (len(TAGS) - 1), f"{len(TAGS) - 1} groups for {len(TAGS)} tags"),
        (["music"] * len(TAGS), "at most one tag may be in group 'music'"),
    ],
)
def test_bad_groups_refused(bundle, groups, message):
    _with_groups(bundle, groups)
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle.path)


def test_bad_group_is_one_line_from_the_cli(bundle, tmp_path):
    _with_groups(bundle, ["instrument"] * (len(TAGS) - 1) + ["colour"])
    p = run_cli("embed", "x.wav", "--bundle", str(bundle.path), "--out", str(tmp_path / "e.npy"))
    assert p.returncode == 2
    lines = p.stderr_text.strip().splitlines()
    assert len(lines) == 1 and "invalid manifest" in lines[0] and "groups" in lines[0], lines
