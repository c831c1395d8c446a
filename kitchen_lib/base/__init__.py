"""Base: the small helpers every layer may use, knowing nothing of kitchens or models.

paths (the data folder, atomic writes), locks (one writer per folder), images (frames as arrays,
tensors, grids and PNGs), device (cpu / cuda / mps), global_batch (one rank's rows of a draw).

May import: base.
"""
