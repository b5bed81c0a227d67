#!/usr/bin/env bash
# One entry point for a fresh machine: installs what rt-tagger needs (system packages, a venv
# in .venv with the project), then runs the demo or the tests.
#   scripts/dev.sh demo   -> tag the bundled demo clip with the shipped default model, showing
#                            what a ZeroMQ subscriber in another process receives
#   scripts/dev.sh test   -> the whole test suite (what CI runs)
#   scripts/dev.sh setup  -> only install
# Set-up is idempotent and skipped when nothing changed (stamp file keyed by pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${RT_TAGGER_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

APT_PACKAGES=(libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libzmq3-dev pkg-config gcc make
  libfluidsynth3 fluid-soundfont-gm musescore-general-soundfont timidity freepats ffmpeg espeak-ng
  fretsonfire-songs-muldjord libsonivox3)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

install_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "dev.sh: apt-get not found; install these system packages yourself: ${missing[*]}" >&2
    return 1
  fi
  echo "dev.sh: installing system packages: ${missing[*]}"
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
  local stamp="$VENV/.rt-tagger-stamp" want
  want=$(sha256sum pyproject.toml | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  echo "dev.sh: installing rt-tagger and its dependencies into $VENV (torch CPU wheels: a few minutes)"
  "$VENV/bin/pip" install -q -e ".[dev,synth,tensorrt-rtx,teachers]"
  echo "$want" >"$stamp"
}

# The default model ships its ONNX graph (sealed in its manifest), so nothing is built here;
# after retraining it: python -m engines.seal rt_tagger/default_model --ship-runtime
setup() { install_system; install_python; }

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/rt-tagger" demo "$@" ;;
  test)
    setup
    bash scripts/start_test_audio.sh || echo "dev.sh: no PulseAudio test device; microphone tests will skip (reason printed)"
    set +e
    "$VENV/bin/python" -m pytest -q "$@"
    rc=$?
    set -e
    # pytest's 5 means "no tests collected": a broken suite, never a pass.
    [ $rc -eq 5 ] && echo "dev.sh: pytest collected no tests" >&2
    exit $rc ;;
  *) echo "usage: scripts/dev.sh demo|test|setup [args]" >&2; exit 2 ;;
esac
