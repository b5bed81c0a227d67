import subprocess

import pytest

from engines.provenance import ENV_COMMIT, git_commit


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_COMMIT, raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "watched").mkdir()
    (tmp_path / "other").mkdir()
    for d in ("watched", "other"):
        (tmp_path / d / "f.txt").write_text("a\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def _head(repo) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def test_clean_checkout_gives_the_head_sha(repo):
    assert git_commit(["watched"], repo) == _head(repo)


def test_changes_in_a_watched_folder_mark_it_dirty_and_others_do_not(repo):
    (repo / "other" / "f.txt").write_text("b\n")
    assert git_commit(["watched"], repo) == _head(repo)
    (repo / "watched" / "f.txt").write_text("b\n")
    assert git_commit(["watched"], repo) == _head(repo) + "+dirty"


def test_the_environment_wins_only_with_a_full_sha(repo, monkeypatch):
    monkeypatch.setenv(ENV_COMMIT, "ab" * 20)
    assert git_commit(["watched"], repo) == "ab" * 20
    monkeypatch.setenv(ENV_COMMIT, "HEAD")
    assert git_commit(["watched"], repo) == _head(repo)


def test_no_checkout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_COMMIT, raising=False)
    assert git_commit(["watched"], tmp_path) == "unknown"
