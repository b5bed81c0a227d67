"""``python -m training.multitask.carry_bundle BUNDLE OUT.tgz``: a bundle packed for a device call.

The recipe's ``distill.bundle`` (a width-48 model taught to a width-32 student) has to reach the
GPU machine, and a device call carries 64 MiB with the tracked tree: a width-48 bundle's 26 MB of
float32 weights do not fit beside it. Rounded to float16 (and stored back as float32, so the bundle
is a plain one) they gzip to about 15 MB. The rounding moves the width-48 model's probabilities on
the 160 held-out clips by 1.3e-4 on average and 0.004 at most (reports/default_model.md).
``gpu_run.sh stage`` unpacks ``bundles/*.tgz`` of a carried folder into the machine's data folder.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

from engines.atomic import atomic_path
from engines.bundle import Bundle, BundleError, save_bundle

__all__ = ["rounded_to_fp16", "main"]


def rounded_to_fp16(src: str | Path, out: str | Path) -> Bundle:
    """``src``'s bundle with every floating-point weight rounded to float16 (stored as float32)."""
    bundle = Bundle.load(src)
    model = bundle.build_model()
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return save_bundle(out, model, bundle.manifest, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.multitask.carry_bundle", description=__doc__.splitlines()[0]
    )
    p.add_argument("bundle", type=Path, help="the bundle to carry")
    p.add_argument("out", type=Path, help="the .tgz to write (one folder inside, named as the file)")
    a = p.parse_args(argv)
    if not a.out.name.endswith(".tgz"):
        print(f"error: {a.out} should end in .tgz", file=sys.stderr)
        return 2
    name = a.out.name[: -len(".tgz")]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rounded_to_fp16(a.bundle, Path(tmp) / name)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(a.out) as part, tarfile.open(part, "w:gz") as tar:  # never a half-written .tgz
                tar.add(Path(tmp) / name, arcname=name)
    except BundleError as e:
        print(f"error: {a.bundle}: {e}", file=sys.stderr)
        return 2
    print(f"{a.bundle} -> {a.out} ({a.out.stat().st_size / 1e6:.1f} MB; weights rounded to float16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
