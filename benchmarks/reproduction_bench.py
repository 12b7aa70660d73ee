"""What the reproduction record costs at run start: the agents with packages, git state and patch, seeds, environment.

Run:  .venv/bin/python benchmarks/reproduction_bench.py  [--repeat 20] [--repo PATH]

It times `trainprov.capture.agents.collect` (every agent row a run writes at start) with the
working directory in a git repository (this one by default: its uncommitted diff, if any,
is part of the record), and each piece on its own, and prints the median and the slowest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from trainprov.capture import agents, reproduction


def timed(fn, repeat: int) -> list[float]:
    """Seconds per call, `repeat` calls."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    os.chdir(args.repo)
    rows = agents.collect("bench")
    program = rows[-1][4]
    size = len(json.dumps([r[4] for r in rows], default=str))
    print(f"repository {args.repo}: {len(reproduction.packages())} packages, dirty={program.get('git_dirty')}, "
          f"patch {((program.get('git_patch') or {}).get('size_bytes') or 0):,} bytes; agent details {size:,} bytes of JSON")
    for name, fn in [("all agents (what a run start pays)", lambda: agents.collect("bench")),
                     ("installed packages", reproduction.packages),
                     ("git state and patch", lambda: reproduction.git_state(args.repo)),
                     ("seeds", reproduction.seeds),
                     ("environment variables", reproduction.environment)]:
        times = timed(fn, args.repeat)
        print(f"{name:<38} median {statistics.median(times) * 1000:7.1f} ms   max {max(times) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
