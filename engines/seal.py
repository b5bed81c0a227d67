"""``python -m engines.seal BUNDLE``: give a bundle you have checked its manifest digest.

Bundles written before format 2 have no ``manifest_sha256`` and are refused; after checking the
tags, thresholds and front end in its manifest.json, this seals it so it loads again.

``--ship-runtime`` also builds the CPU runtime's artifact (the fp32 ONNX graph; the front end
needs none) and lists it in the manifest, so the bundle runs on ONNX Runtime anywhere without an export
(this is how the default model inside the package is prepared).
"""

from __future__ import annotations

import argparse
import sys

from engines.bundle import MANIFEST_FILE, Bundle, seal_bundle
from engines.errors import UserError


def ship_runtime_artifacts(bundle: Bundle) -> Bundle:
    """Build the fp32 ONNX graph and seal it into the manifest."""
    from engines.cache import seal_artifacts
    from engines.onnx_export import DEFAULT_OPSET, onnx_artifact
    from engines.runtime_artifacts import ensure_runtime_artifacts

    ensure_runtime_artifacts(bundle, "fp32", DEFAULT_OPSET)
    return seal_artifacts(bundle, [onnx_artifact(bundle, "fp32", DEFAULT_OPSET)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.seal", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--ship-runtime", action="store_true", help="build and list the CPU runtime's artifacts")
    args = p.parse_args(argv)
    try:
        bundle = seal_bundle(args.bundle)
        if args.ship_runtime:
            bundle = ship_runtime_artifacts(bundle)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    shipped = ", ".join(bundle.manifest.artifacts) or "no artifacts"
    print(f"sealed {bundle.path / MANIFEST_FILE} (manifest_sha256 {bundle.manifest_sha256[:12]}…; {shipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
