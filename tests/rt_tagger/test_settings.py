"""Runtime settings: TOML defaults, --config files, RT_TAGGER_ env, CLI flags, invalid values."""

from __future__ import annotations

import tomllib

import pytest

from rt_tagger.settings import DEFAULT_CONFIG, RuntimeSettings, SettingsError, load_settings
from tests.rt_tagger.conftest import cli_env, run_cli


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("RT_TAGGER_"):
            monkeypatch.delenv(k)


def test_shipped_toml_equals_code_defaults():
    with open(DEFAULT_CONFIG, "rb") as f:
        toml = tomllib.load(f)
    defaults = RuntimeSettings.model_construct().model_dump()  # code defaults only
    loaded = load_settings().model_dump()
    for key, value in toml.items():
        if isinstance(value, dict):
            for k2, v2 in value.items():
                assert loaded[key][k2] == v2, f"{key}.{k2}"
        else:
            assert loaded[key] == value, key
    assert set(toml) <= set(defaults)


def test_precedence_toml_env_cli(tmp_path, monkeypatch):
    cfg = tmp_path / "my.toml"
    cfg.write_text('stream_id = "from-file"\nhop_seconds = 0.3\n[aggregator]\nmode = "ema"\ntop_k = 7\n')
    s = load_settings(cfg)
    assert (s.stream_id, s.hop_seconds, s.aggregator.mode, s.aggregator.top_k) == ("from-file", 0.3, "ema", 7)
    assert s.aggregator.horizon_windows == 4  # untouched nested fields keep their defaults
    monkeypatch.setenv("RT_TAGGER_HOP_SECONDS", "0.25")
    monkeypatch.setenv("RT_TAGGER_AGGREGATOR__TOP_K", "2")
    s = load_settings(cfg)
    assert (s.hop_seconds, s.aggregator.top_k, s.aggregator.mode) == (0.25, 2, "ema")
    s = load_settings(cfg, hop_seconds=0.75, aggregator={"top_k": None})
    assert s.hop_seconds == 0.75 and s.aggregator.top_k == 2


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"hop_seconds": 0.01}, "invalid setting hop_seconds=0.01"),
        ({"aggregator": {"mode": "median"}}, "invalid setting aggregator.mode=median"),
        ({"aggregator": {"off_ratio": 1.5}}, "aggregator.off_ratio=1.5"),
        ({"publish": {"endpoint": "udp://x"}}, "publish.endpoint"),
        ({"colour": "red"}, "unknown setting colour"),
    ],
)
def test_invalid_values_name_field_and_reason(kwargs, needle):
    with pytest.raises(SettingsError) as e:
        load_settings(**kwargs)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_env_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RT_TAGGER_AGGREGATOR__HORIZON_WINDOWS", "zero")
    with pytest.raises(SettingsError, match="aggregator.horizon_windows"):
        load_settings()
    monkeypatch.delenv("RT_TAGGER_AGGREGATOR__HORIZON_WINDOWS")
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("hop_seconds = = 1\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad)


def test_cli_invalid_setting_is_one_line(tmp_path):
    p = run_cli("devices", env=cli_env(RT_TAGGER_HOP_SECONDS="0.01"))
    lines = p.stderr_text.strip().splitlines()
    assert p.returncode != 0
    assert len(lines) == 1 and "hop_seconds=0.01" in lines[0], p.stderr_text


@pytest.mark.parametrize(
    "var, needle",
    [
        ("RT_TAGGER_FOO", "unknown environment variable RT_TAGGER_FOO"),
        ("RT_TAGGER_HOP", "unknown environment variable RT_TAGGER_HOP"),
        ("RT_TAGGER_AGGREGATOR__COLOUR", "unknown environment variable RT_TAGGER_AGGREGATOR__COLOUR"),
        ("rt_tagger_stream_idd", "unknown environment variable rt_tagger_stream_idd"),
    ],
)
def test_unknown_environment_variables_are_errors(var, needle, monkeypatch):
    monkeypatch.setenv(var, "1")
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_known_and_other_environment_variables_are_accepted(monkeypatch):
    from rt_tagger.settings import OTHER_ENV

    for var in OTHER_ENV:  # read by engines, training or bench, not settings
        monkeypatch.setenv(var, "x")
    monkeypatch.setenv("rt_tagger_stream_id", "lower")  # like pydantic-settings: case-insensitive
    monkeypatch.setenv("RT_TAGGER_AGGREGATOR", '{"mode": "ema"}')
    monkeypatch.setenv("RT_TAGGER_PUBLISH__CURVE_CLIENTS", "/keys/authorized_clients")
    s = load_settings()
    assert (s.stream_id, s.aggregator.mode, str(s.publish.curve_clients)) == (
        "lower",
        "ema",
        "/keys/authorized_clients",
    )


def test_section_as_bad_json_is_one_line(monkeypatch):
    monkeypatch.setenv("RT_TAGGER_AGGREGATOR", "{bad")
    with pytest.raises(
        SettingsError, match="^environment variable RT_TAGGER_AGGREGATOR is not valid JSON"
    ) as e:
        load_settings()
    assert "\n" not in str(e.value)


def test_curve_settings_from_a_config_file(tmp_path):
    cfg = tmp_path / "curve.toml"
    cfg.write_text(
        '[publish]\ncurve_server_secret = "k/server.key_secret"\ncurve_clients = "k/authorized_clients"\n'
    )
    p = load_settings(cfg).publish
    assert (str(p.curve_server_secret), str(p.curve_clients), p.insecure_remote) == (
        "k/server.key_secret",
        "k/authorized_clients",
        False,
    )
