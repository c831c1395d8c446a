"""The README's main command from scratch, timed: `quickstart` into an empty data folder and an
empty Minari store (as on a fresh clone), then its summary with the wall time of each step.

    python bench/quickstart.py            # about 40 minutes on a 2-core CPU; run it alone
    python bench/quickstart.py --smoke    # the tiny version, seconds

Prints the summary and writes bench/results/quickstart.json (the README's results table reads it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from _common import machine, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--keep", type=Path, default=None,
                    help="a folder for the data folder and Minari store (<keep>/data, <keep>/minari), kept afterwards; "
                         "default: a temporary one, deleted")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        os.environ["KITCHEN_DATA_DIR"] = str(root / "data")
        os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
        from kitchen_lib.frontend.quickstart import quickstart

        summary = quickstart(smoke=a.smoke)
    out = write_json(f"quickstart{'-smoke' if a.smoke else ''}.json",
                     {"machine": machine(), "command": "python -m kitchen_lib quickstart" + (" --smoke" if a.smoke else ""),
                      "summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
