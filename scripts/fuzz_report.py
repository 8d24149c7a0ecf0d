"""Run the fuzz suite (tests/fuzz) and print how its inputs ended.

    python scripts/fuzz_report.py [--examples N] [--out report.json]

Every input either loads into a complete stage or fails with a UserError; the table counts,
per loader and mutation, the inputs that loaded, the errors that named their file with a
line/row/field, those that named the file only (whole-file problems: not gzip, empty, ...),
those that named neither, and tracebacks (any other exception: must be 0). ``--examples``
raises hypothesis' examples per loader and mutation (default 10, what CI runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("loaded", "located", "file_only", "unlocated", "traceback")


def main() -> int:
    """Run pytest on tests/fuzz, then print the tally it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=10, help="examples per loader/mutation")
    parser.add_argument("--out", type=Path, help="also keep the JSON report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "fuzz.json"
        env = {
            **os.environ,
            "LLMREC_FUZZ_REPORT": str(report),
            "LLMREC_FUZZ_EXAMPLES": str(args.examples),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz"]
        status = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
        data = json.loads(report.read_text(encoding="utf-8"))
    width = max(len(g) for g in data["groups"])
    print(f"\n{'loader/mutation':<{width}}  " + "  ".join(f"{c:>9}" for c in COLUMNS))
    for group, counts in data["groups"].items():
        print(f"{group:<{width}}  " + "  ".join(f"{counts.get(c, 0):>9}" for c in COLUMNS))
    print(
        f"\n{data['inputs']} inputs: {data['loaded']} loaded; {data['located']} errors named "
        f"file and line/row/field, {data['file_only']} the file only, {data['unlocated']} "
        f"neither; {data['traceback']} tracebacks"
    )
    if args.out:
        args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return status or int(data["traceback"] > 0)


if __name__ == "__main__":
    sys.exit(main())
