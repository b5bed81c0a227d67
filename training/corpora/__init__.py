"""Corpus builders: synthetic labelled renders, real unlabelled music, packing for the GPU machine."""
