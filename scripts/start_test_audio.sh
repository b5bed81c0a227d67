#!/usr/bin/env bash
# Start a PulseAudio daemon with a null sink "rt_null" whose monitor is the default source, so
# tests can play a WAV into the sink (paplay --device=rt_null) and capture it through PortAudio
# ("pulse" device) as if it were a microphone. Idempotent; exit 0 when the device is ready.
#
# As root (CI containers), plain `pulseaudio -D` works: it prints a warning that it is not meant
# for root but runs a per-user daemon, which is what the tests need (no --system: that mode
# refuses module loading by clients and needs the pulse user/group).
#
# Without apt (the GPU device machine): `bash scripts/carried_audio.sh setup && . /opt/rt-audio/env`
# first; its daemon already has rt_null, and PULSE_DLPATH in that env lets the start below work too.
set -euo pipefail
SINK=rt_null

if ! command -v pulseaudio >/dev/null || ! command -v pactl >/dev/null; then
  echo "start_test_audio: pulseaudio/pactl not installed (apt-get install pulseaudio pulseaudio-utils;" \
    "without apt: scripts/carried_audio.sh setup, then source its env file)" >&2
  exit 1
fi

if ! pactl info >/dev/null 2>&1; then
  # --exit-idle-time=-1: stay up between tests; no real sound card in CI, so skip udev/alsa detection.
  pulseaudio -D --exit-idle-time=-1 --disallow-exit -n \
    --load="module-native-protocol-unix" --load="module-always-sink" 2>/dev/null \
    || pulseaudio -D --exit-idle-time=-1 2>/dev/null || true
  for _ in $(seq 1 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
fi
if ! pactl info >/dev/null 2>&1; then
  echo "start_test_audio: the PulseAudio daemon did not start" >&2
  exit 1
fi

if ! pactl list short sinks | awk '{print $2}' | grep -qx "$SINK"; then
  pactl load-module module-null-sink sink_name="$SINK" rate=44100 channels=2 >/dev/null
fi
pactl set-default-source "$SINK.monitor"
echo "start_test_audio: PulseAudio ready; sink $SINK, default source $SINK.monitor"
