#!/usr/bin/env bash
# Create a separate virtual environment with musicnn 0.1.0 (MTT_musicnn), the peer that
# `rt-tagger bench peers` compares against. musicnn is never a dependency of rt-tagger: it runs
# only as a subprocess from this environment.
#
# Usage: scripts/setup_musicnn_env.sh [VENV_DIR]      (default: /work/musicnn-venv)
#
# Why the pins: musicnn 0.1.0 declares numpy<1.17 and tensorflow>=1.14, which no current Python can
# install, but its code only needs tf.compat.v1 graph mode + tf.compat.v1.layers. TensorFlow 2.x
# provides those through the legacy Keras package (tf_keras) when TF_USE_LEGACY_KERAS=1 is set, so
# we install tensorflow-cpu + tf_keras + librosa and then musicnn itself with --no-deps.
#
# numpy<2 is required for correct output: musicnn's batch_data computes
# np.log10(10000 * mel.astype(float16) + 1). Under numpy 1.x value-based casting the product is
# float32; under numpy >= 2 (NEP 50) it stays float16 and overflows to inf wherever the mel power
# exceeds ~6.55, so loud music gets identical tags in every window.
set -euo pipefail
VENV="${1:-/work/musicnn-venv}"
PY="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "numpy<2" "tensorflow-cpu==2.21.*" "tf_keras==2.21.*" "librosa>=0.10,<0.12" soundfile safetensors
"$VENV/bin/pip" install -q --no-deps "musicnn==0.1.0"

# Smoke check: the model graph builds and tags one second of noise.
TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" - <<'PY'
import tempfile, numpy as np, soundfile as sf
from musicnn.extractor import extractor
with tempfile.NamedTemporaryFile(suffix=".wav") as f:
    sf.write(f.name, np.random.default_rng(0).standard_normal(16000 * 4).astype("float32") * 0.1, 16000)
    taggram, tags = extractor(f.name, model="MTT_musicnn", input_length=3, extract_features=False)
assert int(np.__version__.split(".")[0]) < 2, f"numpy {np.__version__}: musicnn needs numpy < 2"
print(f"musicnn OK: taggram {taggram.shape}, {len(tags)} tags, numpy {np.__version__}")
PY
echo "musicnn environment ready: $VENV (run with TF_USE_LEGACY_KERAS=1)"
