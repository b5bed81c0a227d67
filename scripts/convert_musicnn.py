"""Convert musicnn 0.1.0's TensorFlow checkpoints to safetensors and record reference outputs.

Runs ONLY in musicnn's own environment (TensorFlow, numpy < 2), never in rt-tagger's::

    scripts/setup_musicnn_env.sh /work/musicnn-venv
    TF_USE_LEGACY_KERAS=1 /work/musicnn-venv/bin/python scripts/convert_musicnn.py \
        [--example path/to/joram-moments_of_clarity-08-solipsism-59-88.mp3]

Writes (paths relative to the repository root):
- ``training/teachers/weights/{MTT,MSD}_musicnn.safetensors``: the inference weights laid out
  for :class:`training.teachers.musicnn.MusiCNN` (Adam slots dropped), with metadata: tags,
  config, source wheel version and the sha256 of each checkpoint file;
- ``tests/fixtures/teachers/musicnn_reference.npz``: a fixed synthetic 4-s clip (int16), the
  log-mel that musicnn's own ``batch_data`` computes from it (numpy 1.x, so the float32 product
  it was trained with), and the TensorFlow graph's logits, sigmoid and penultimate outputs on a
  187-frame patch and a 64-frame patch for both models, so CI (no TensorFlow) checks the port;
- with ``--example``: ``tests/fixtures/teachers/musicnn_example.npz``, musicnn's own
  ``extractor()`` taggrams of the published example for both models (numbers only, no audio).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / "training" / "teachers" / "weights"
FIXTURES = ROOT / "tests" / "fixtures" / "teachers"
MODELS = ("MTT_musicnn", "MSD_musicnn")
SR = 16000


def _check_env() -> None:
    if int(np.__version__.split(".")[0]) >= 2:
        sys.exit(
            f"convert_musicnn: numpy {np.__version__}: run in musicnn's environment with numpy < 2 "
            "(scripts/setup_musicnn_env.sh): musicnn's front end overflows in float16 under numpy >= 2"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bn(reader, tf_name: str, torch_name: str) -> dict:
    g = reader.get_tensor
    return {
        f"{torch_name}.weight": g(f"{tf_name}/gamma"),
        f"{torch_name}.bias": g(f"{tf_name}/beta"),
        f"{torch_name}.running_mean": g(f"{tf_name}/moving_mean"),
        f"{torch_name}.running_var": g(f"{tf_name}/moving_variance"),
        f"{torch_name}.num_batches_tracked": np.zeros((), dtype=np.int64),
    }


def _suffix(i: int) -> str:
    return "" if i == 0 else f"_{i}"


def convert_state(reader) -> dict[str, np.ndarray]:
    """TF variable names (creation order in musicnn's build_musicnn) -> MusiCNN state dict."""
    g = reader.get_tensor
    sd = _bn(reader, "batch_normalization", "input_bn")
    # conv2d, conv2d_1: timbral (bn 1, 2); conv2d_2..4: temporal (bn 3..5); conv2d_5..7: mid-end (bn 6..8)
    blocks = [("timbral.0", 0), ("timbral.1", 1), ("temporal.0", 2), ("temporal.1", 3), ("temporal.2", 4)]
    for name, i in blocks:
        k = g(f"conv2d{_suffix(i)}/kernel")  # (H=time, W=freq, in, out) -> (out, in, H, W)
        sd[f"{name}.conv.weight"] = k.transpose(3, 2, 0, 1)
        sd[f"{name}.conv.bias"] = g(f"conv2d{_suffix(i)}/bias")
        sd.update(_bn(reader, f"batch_normalization_{i + 1}", f"{name}.bn"))
    for j, i in enumerate((5, 6, 7)):
        k = g(f"conv2d_{i}/kernel")  # (time, channels, 1, out) -> Conv1d (out, channels, time)
        sd[f"midend.{j}.conv.weight"] = k[:, :, 0, :].transpose(2, 1, 0)
        sd[f"midend.{j}.conv.bias"] = g(f"conv2d_{i}/bias")
        sd.update(_bn(reader, f"batch_normalization_{i + 1}", f"midend.{j}.bn"))
    sd.update(_bn(reader, "batch_normalization_9", "pool_bn"))
    sd["dense.weight"], sd["dense.bias"] = g("dense/kernel").T, g("dense/bias")
    sd.update(_bn(reader, "batch_normalization_10", "dense_bn"))
    sd["out.weight"], sd["out.bias"] = g("dense_1/kernel").T, g("dense_1/bias")
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def test_signal() -> np.ndarray:
    """4 s: a quiet chord, then a loud one with a kick-like pulse, then a chirp over soft noise.

    The loud part drives mel power far above 6.55, where musicnn's float16 product overflows
    under numpy >= 2, so the fixture also pins the float32 front end.
    """
    t = np.arange(4 * SR) / SR
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63, 440.0)) / 4
    env = np.where(t < 1.3, 0.05, np.where(t < 2.6, 0.8, 0.2))
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-30 * (t % 0.5)) * (t >= 1.3) * (t < 2.6)
    chirp = np.sin(2 * np.pi * (200 * t + 400 * t**2)) * (t >= 2.6) * 0.3
    noise = np.random.default_rng(0).standard_normal(t.size) * 0.01
    x = env * chord + 0.5 * kick + chirp + noise
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def _session(model: str, musicnn_dir: Path, n_tags: int):
    import tensorflow as tf
    from musicnn import models

    tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        out = models.define_model(x, is_training, model, n_tags)
        logits, penultimate = out[0], out[-1]
        sess = tf.compat.v1.Session(graph=graph)
        tf.compat.v1.train.Saver().restore(sess, str(musicnn_dir / model) + "/")

    def run(batch: np.ndarray):
        lo, pen = sess.run([logits, penultimate], feed_dict={x: batch, is_training: False})
        return lo, 1 / (1 + np.exp(-lo.astype(np.float64))), pen

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--example", type=Path, help="musicnn's audio/joram-…-59-88.mp3 (from its git repository)"
    )
    args = ap.parse_args()
    _check_env()
    import musicnn
    import soundfile as sf
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn.extractor import batch_data, extractor
    from safetensors.numpy import save_file

    musicnn_dir = Path(musicnn.__file__).resolve().parent
    version = "0.1.0"
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    labels = {"MTT_musicnn": config.MTT_LABELS, "MSD_musicnn": config.MSD_LABELS}

    for model in MODELS:
        ckpt = musicnn_dir / model
        reader = tf.compat.v1.train.NewCheckpointReader(str(ckpt) + "/")
        sd = convert_state(reader)
        meta = {
            "tags": json.dumps(labels[model]),
            "config": json.dumps({"midend_filters": 64, "backend_units": 200}),
            "source": f"musicnn {version} wheel, {model}/ checkpoint (ISC license, MTG-UPF 2019)",
            "checkpoint_sha256": json.dumps(
                {p.name: _sha256(p) for p in sorted(ckpt.iterdir()) if p.name.startswith(".")}
            ),
            "converter": "scripts/convert_musicnn.py",
        }
        out = WEIGHTS_DIR / f"{model}.safetensors"
        save_file(sd, str(out), metadata=meta)
        out.chmod(0o644)
        n = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
        print(f"{model}: {len(sd)} tensors, {n} parameters -> {out.relative_to(ROOT)}")

    # Reference outputs on a fixed clip, through musicnn's own front end (batch_data).
    pcm = test_signal()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "signal.wav"
        sf.write(str(wav), pcm, SR, subtype="PCM_16")
        _, logmel = batch_data(str(wav), 187, 187)
    logmel = logmel.astype(np.float32)
    ref = {"audio_int16": pcm, "logmel": logmel}
    patches = {"p187": logmel[None, :187], "p64": logmel[None, 187 : 187 + 64]}
    for model in MODELS:
        run = _session(model, musicnn_dir, len(labels[model]))
        for name, batch in patches.items():
            lo, prob, pen = run(batch)
            ref[f"{model}.{name}.logits"] = lo
            ref[f"{model}.{name}.sigmoid"] = prob.astype(np.float32)
            ref[f"{model}.{name}.penultimate"] = pen
    np.savez_compressed(FIXTURES / "musicnn_reference.npz", **ref)
    print(f"reference outputs: logmel {logmel.shape}, max {logmel.max():.3f} -> musicnn_reference.npz")

    if args.example is not None:
        ex = {}
        for model in MODELS:
            taggram, tags = extractor(str(args.example), model=model, input_length=3, extract_features=False)
            ex[f"{model}.taggram"] = taggram.astype(np.float32)
            mean = taggram.mean(axis=0)
            top = [(tags[i], round(float(mean[i]), 4)) for i in np.argsort(-mean)[:10]]
            print(f"example {model}: {taggram.shape[0]} patches, top-10 {top}")
        ex["source_file"] = np.array(args.example.name)
        ex["sha256"] = np.array(_sha256(args.example))
        np.savez_compressed(FIXTURES / "musicnn_example.npz", **ex)
    return 0


if __name__ == "__main__":
    sys.exit(main())
