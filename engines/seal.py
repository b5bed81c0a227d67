"""``python -m engines.seal BUNDLE``: give a bundle you have checked its manifest digest.

Bundles written before format 2 have no ``manifest_sha256`` and are refused; after checking the
tags, thresholds and front end in its manifest.json, this seals it so it loads again.
"""

from __future__ import annotations

import argparse
import sys

from engines.bundle import MANIFEST_FILE, seal_bundle
from engines.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.seal", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle directory")
    args = p.parse_args(argv)
    try:
        bundle = seal_bundle(args.bundle)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"sealed {bundle.path / MANIFEST_FILE} (manifest_sha256 {bundle.manifest_sha256[:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
