"""Where exploration episodes take the hand, against the scripted expert's: reach and coverage.

    python bench/explore.py [--episodes 5] [--steps 900]

For each policy, seeded episodes as `generate` makes them (seeds 0..N-1): the share of each kind
of target the hand reached (kitchen_lib.data.explore: far, near, via, touch...), the spread of
the hand's positions (5th to 95th percentile per axis, from the recorded joint states by forward
kinematics), the gripper's openings and closings, and how many episodes moved each object joint.
Prints tables and writes bench/results/explore.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine, table, write_json  # noqa: E402

import kitchen_lib  # noqa: F401,E402  (headless MUJOCO_GL before mujoco loads)
from kitchen_lib.data.expert import run_episode  # noqa: E402
from kitchen_lib.data.explore import ExploreConfig, explore_episode, hand_positions  # noqa: E402
from kitchen_lib.data.kitchen import make_env  # noqa: E402

# Object joints (qpos index) and how far each must move to count: 2 cm or 0.05 rad.
OBJECTS = {"knob 1": 9, "knob 2": 11, "knob 3": 13, "knob 4": 15, "light switch": 17, "slide cabinet": 19,
           "hinge left": 20, "hinge right": 21, "microwave": 22, "kettle x": 23, "kettle y": 24, "kettle z": 25}
MOVED = {name: 0.02 if name.startswith("kettle") else 0.05 for name in OBJECTS}


def finger_switches(obs: np.ndarray) -> tuple[int, int]:
    """Openings (both fingers past 0.03 m after being under 0.01) and closings (the reverse)."""
    f = obs[:, 7:9].min(axis=1), obs[:, 7:9].max(axis=1)
    opened, closed, state = 0, 0, None
    for lo, hi in zip(*f, strict=True):
        if lo > 0.03 and state != "open":
            opened += state is not None
            state = "open"
        elif hi < 0.01 and state != "closed":
            closed += state is not None
            state = "closed"
    return opened, closed


def summarise(name: str, records, env) -> dict:
    hands = np.concatenate([hand_positions(env, r.observations) for r in records])
    lo, hi = np.percentile(hands, 5, axis=0), np.percentile(hands, 95, axis=0)
    switches = np.array([finger_switches(r.observations) for r in records])
    moved = {o: sum(np.ptp(r.observations[:, 18 + i - 9]) > MOVED[o] for r in records) for o, i in OBJECTS.items()}
    return {"policy": name, "episodes": len(records), "steps": int(sum(len(r.actions) for r in records)),
            "hand_p5": lo.round(3).tolist(), "hand_p95": hi.round(3).tolist(),
            "spread_xyz": (hi - lo).round(3).tolist(), "openings": int(switches[:, 0].sum()),
            "closings": int(switches[:, 1].sum()), "episodes_moving": {o: int(n) for o, n in moved.items()},
            "completed": [list(r.completed) for r in records]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--steps", type=int, default=900)
    a = ap.parse_args()
    env = make_env(max_episode_steps=a.steps)
    log: list[dict] = []
    t0 = time.time()
    explore = [explore_episode(env, s, a.steps, log=log) for s in range(a.episodes)]
    explore_s = time.time() - t0
    expert = [run_episode(env, s, max_steps=a.steps) for s in range(a.episodes)]
    kinds = []
    for kind in dict.fromkeys(e["kind"] for e in log):
        mine = [e for e in log if e["kind"] == kind]
        kinds.append({"kind": kind, "targets": len(mine), "reached": f"{np.mean([e['reached'] for e in mine]):.0%}",
                      "mean steps": f"{np.mean([e['steps'] for e in mine]):.1f}"})
    rows = [summarise("explore", explore, env), summarise("expert", expert, env)]
    env.close()
    print(f"{a.episodes} exploration episodes of {a.steps} steps in {explore_s:.1f}s; box {ExploreConfig().box_lo} "
          f"to {ExploreConfig().box_hi}")
    print(table(kinds, ["kind", "targets", "reached", "mean steps"]))
    print()
    print(table(rows, ["policy", "episodes", "steps", "hand_p5", "hand_p95", "spread_xyz", "openings", "closings"]))
    print()
    print(table([{"object": o} | {r["policy"]: r["episodes_moving"][o] for r in rows} for o in OBJECTS],
                ["object", "explore", "expert"]))
    out = write_json("explore.json", {"machine": machine(), "episodes": a.episodes, "steps": a.steps,
                                      "explore_seconds": round(explore_s, 1), "targets": kinds, "policies": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
