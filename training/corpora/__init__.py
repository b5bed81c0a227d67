"""Corpus builders: synthetic labelled renders (several soundfonts, composer configurations), real
unlabelled music from Debian packages split by package, not-music negatives, Opus packs."""
