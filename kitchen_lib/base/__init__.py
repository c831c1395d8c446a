"""Base: the small helpers every layer may use, knowing nothing of kitchens or models.

errors (a user's mistake as against a bug), paths (the data folder, atomic writes, destinations
checked before any work), locks (one writer per folder, temps their owner holds), images (frames
as arrays, tensors, grids and PNGs), device (cpu / cuda / mps), global_batch (one rank's rows of
a draw).

May import: base.
"""
