"""The wire format: round trips, forward compatibility, and the committed JSON Schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from rt_tagger.messages import (
    END_REASONS,
    SCHEMA_PATH,
    SCHEMA_VERSION,
    BackendInfo,
    DropCounters,
    EndInfo,
    ModelInfo,
    StageTimings,
    TagEvent,
    TagMessage,
    TagScore,
    WindowInfo,
    export_schema,
    json_schema,
    schema_text,
)

TAGS = ["piano", "guitar", "drums"]


def full_message(seq: int = 7) -> TagMessage:
    return TagMessage(
        stream_id="mic",
        seq=seq,
        window=WindowInfo(start_sample=8000, end_sample=72000, start_s=0.5, end_s=4.5),
        capture_wall_time=1_700_000_000.25,
        publish_wall_time=1_700_000_000.26,
        timings_ms=StageTimings(
            capture_to_ring=0.1, framing_mel=0.3, inference=4.0, aggregation=0.05, publish=0.02
        ),
        top=[TagScore(tag="piano", score=0.9), TagScore(tag="drums", score=0.4)],
        scores=[0.9, 0.1, 0.4],
        tags=TAGS,
        events=[TagEvent(tag="piano", state="on", time_s=4.5)],
        active=["piano"],
        drops=DropCounters(ring_overflow_samples=3, publisher_dropped=1),
        backend=BackendInfo(name="torch", device="cpu", precision="fp32"),
        model=ModelInfo(name="default", weights_sha256="0123456789ab"),
    )


def test_round_trip_is_lossless_and_compact():
    msg = full_message()
    body = msg.to_bytes()
    assert isinstance(body, bytes)
    assert b"\n" not in body and b'": ' not in body  # one compact line per message
    assert TagMessage.from_bytes(body) == msg
    assert json.loads(body)["schema_version"] == SCHEMA_VERSION
    assert msg.topic == b"tags.mic"


def test_heartbeat_builder():
    hb = TagMessage.heartbeat(
        "mic",
        12,
        "stalled",
        drops=DropCounters(ring_underflow_events=2),
        backend=BackendInfo(name="torch", device="cpu", precision="fp32"),
        model=ModelInfo(name="m", weights_sha256="abc"),
    )
    back = TagMessage.from_bytes(hb.to_bytes())
    assert (back.kind, back.seq, back.heartbeat_reason, back.top) == ("heartbeat", 12, "stalled", [])
    assert back.drops.ring_underflow_events == 2


def test_unknown_fields_are_ignored_for_forward_compatibility():
    d = json.loads(full_message().to_bytes())
    d["added_in_1_1"] = {"x": 1}
    d["drops"]["new_counter"] = 5
    assert TagMessage.from_bytes(json.dumps(d)).seq == 7


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "nonsense"},
        {"seq": "seven"},
        {"heartbeat_reason": "bored"},
        {"events": [{"tag": "piano", "state": "maybe", "time_s": 1.0}]},
    ],
)
def test_invalid_messages_are_rejected(change):
    d = json.loads(full_message().to_bytes())
    d.update(change)
    with pytest.raises(ValidationError):
        TagMessage.from_bytes(json.dumps(d))


def test_garbage_is_rejected():
    with pytest.raises(ValidationError):
        TagMessage.from_bytes(b"\x00not json")
    with pytest.raises(ValidationError):
        TagMessage.from_bytes(b'{"seq": 1}')  # required fields missing


def test_committed_schema_matches_the_models():
    assert SCHEMA_PATH.is_file(), "run: python -m rt_tagger.messages"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "rt_tagger/schema/tag_message.schema.json is stale; regenerate with: python -m rt_tagger.messages"
    )


def test_export_schema_writes_atomically(tmp_path):
    out = export_schema(tmp_path / "sub" / "s.json")
    assert json.loads(out.read_text()) == json_schema()
    assert [p.name for p in out.parent.iterdir()] == ["s.json"]  # no temp file left behind


def test_schema_accepts_real_messages_and_rejects_bad_ones():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (pip install jsonschema)")
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(json.loads(full_message().to_bytes()))
    hb = TagMessage.heartbeat(
        "s",
        0,
        "silent",
        backend=BackendInfo(name="t", device="c", precision="f"),
        model=ModelInfo(name="m", weights_sha256="a"),
    )
    validator.validate(json.loads(hb.to_bytes()))
    bad = json.loads(full_message().to_bytes())
    bad["top"] = [{"tag": "piano"}]
    assert not validator.is_valid(bad)


def test_end_message_round_trips_and_matches_the_schema():
    end = TagMessage(
        kind="end",
        stream_id="mic",
        seq=42,
        events=[TagEvent(tag="piano", state="off", time_s=20.5)],
        drops=DropCounters(ring_underflow_events=1, input_blocked_s=0.25, device_reopens=2),
        backlog_s=0.0,
        backend=BackendInfo(name="torch", device="cpu", precision="fp32"),
        model=ModelInfo(name="m", weights_sha256="abc"),
        end=EndInfo(
            reason="device_lost",
            error="input device 'pulse' delivered no audio",
            stream_s=20.5,
            windows=40,
            heartbeats=2,
        ),
    )
    back = TagMessage.from_bytes(end.to_bytes())
    assert back == end and back.end.reason == "device_lost" and back.drops.device_reopens == 2
    with pytest.raises(ValidationError):  # only the documented reasons
        TagMessage.from_bytes(end.to_bytes().replace(b'"device_lost"', b'"tired"'))
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (pip install jsonschema)")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    validator.validate(json.loads(end.to_bytes()))
    assert END_REASONS == tuple(validator.schema["$defs"]["EndInfo"]["properties"]["reason"]["enum"])
