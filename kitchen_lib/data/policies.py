"""Who acts in our datasets, and which policy's episodes each dataset holds: the scripted
expert (the four tasks), exploration (random reachable poses, touching the objects) or random
actions. Our named datasets each hold one policy's episodes; any other is known by the algorithm
its metadata names. `kitchen_lib.data.generate` runs the policies and writes the datasets.
"""

from __future__ import annotations

from kitchen_lib.data.datasets import (
    EXPLORE_DATASET_ID,
    EXPLORE_SMOKE_DATASET_ID,
    EXPLORE_VERSIONS,
    OFFLINE_DATASET_ID,
    SMOKE_DATASET_ID,
    DatasetError,
    dataset_parts,
    is_local,
    joined,
    open_dataset,
)

# Who acts: the scripted expert, exploration, or random actions.
POLICIES = ("expert", "explore", "random")
# Where random actions go when no id is given (our named datasets keep their own policy's episodes).
RANDOM_DATASET_ID = "kitchen-diffusion/random-v0"
# Our named datasets each hold one policy's episodes.
DATASET_POLICIES = {OFFLINE_DATASET_ID: "expert", SMOKE_DATASET_ID: "expert", EXPLORE_SMOKE_DATASET_ID: "explore",
                    **dict.fromkeys(EXPLORE_VERSIONS, "explore")}
# What each policy's episodes are, for the dataset's metadata (the expert's as they always were).
ALGORITHMS = {"expert": ("kitchen_lib scripted expert (DLS IK waypoints)", "kitchen_lib/data/expert.py",
                         "the scripted expert (kitchen_lib.data.expert)"),
              "explore": ("kitchen_lib exploration (DLS IK to random reachable poses)", "kitchen_lib/data/explore.py",
                          "exploration: random reachable hand poses, the gripper, touching the objects "
                          "(kitchen_lib.data.explore)"),
              "random": ("kitchen_lib scripted expert (DLS IK waypoints)", "kitchen_lib/data/expert.py", "random actions")}


def policy_for(dataset_id: str, policy: str = "expert") -> str:
    """The policy whose episodes `dataset_id` holds: its own for our named datasets, else `policy`."""
    return DATASET_POLICIES.get(dataset_id, policy)


def recorded_policy(dataset_id: str) -> str:
    """The policy whose episodes a dataset holds: ours by their id, any other of ours by the
    algorithm its metadata names (exploration's), else the expert's (D4RL's human demonstrations
    do the tasks too). Unlike policy_for, this opens an unnamed local dataset."""
    if dataset_id in DATASET_POLICIES:
        return DATASET_POLICIES[dataset_id]
    if is_local(dataset_id):
        algorithm = open_dataset(dataset_id).storage.metadata.get("algorithm_name")
        if algorithm == ALGORITHMS["explore"][0]:
            return "explore"
    return "expert"


def default_dataset(policy: str, dataset: str) -> str:
    """Where `generate --policy P` writes when no --dataset is given, for a run whose setting is
    `dataset`: its parts that hold P's episodes; else, for exploration, the exploration dataset of
    `dataset`'s size (smoke's for smoke's), for random actions RANDOM_DATASET_ID."""
    if policy == "random":
        return RANDOM_DATASET_ID
    parts = dataset_parts(dataset)
    mine = [p for p in parts if policy_for(p) == policy]
    if mine:
        return joined(*mine)
    if policy == "explore":
        return EXPLORE_SMOKE_DATASET_ID if SMOKE_DATASET_ID in parts else EXPLORE_DATASET_ID
    return dataset


def checked_policy(dataset_id: str, policy: str | None) -> str:
    """The policy to run for `dataset_id`: a known one, and the one our named datasets hold."""
    own = policy_for(dataset_id, policy or "expert")
    if policy is None:
        return own
    if policy not in POLICIES:
        raise DatasetError(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if policy != own:
        raise DatasetError(f"{dataset_id} holds the {own} policy's episodes, not {policy}: give {policy}'s episodes "
                           f"an id of their own (--dataset kitchen-diffusion/my-{policy}-v0)"
                           + (f", or use {EXPLORE_DATASET_ID}" if policy == "explore" else ""))
    return policy
