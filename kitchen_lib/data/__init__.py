"""Data: from the simulator to what a model is fed.

kitchen (the FrankaKitchen-v1 scene), controller and expert (the scripted policy), explore (the
arm driven to random reachable poses), generate (our offline Minari datasets), datasets (reading
any kitchen dataset, D4RL's or ours), render (states to frames), pairs (the split and the pairs'
config), cache and cache_builder (the pairs cache on disk and its one writer), examples (what a
model is given, gathered from the cache or an episode).

May import: base, data.
"""
