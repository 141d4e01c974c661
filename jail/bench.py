"""Benchmark: what a sandbox costs on top of the program it runs.

    python -m jail.bench [--runs N] [--json FILE]

For each program, the median and p99 wall time of starting it bare (posix_spawn
and wait, no sandbox) and through each backend, interleaved run by run so that
machine drift hits every column alike. Prints one table.
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time

from jail import _process, _runtime


@dataclasses.dataclass
class Case:
    name: str
    bare_argv: list  # on the host, no sandbox
    runtime: object  # the same program in a sandbox
    program: tuple


def cases():
    python = _runtime.python()
    out = [
        Case("/usr/bin/env", ["/usr/bin/env"], _runtime.binary("/usr/bin/env"), ()),
        Case("python3 -c 'print(1)'", [_runtime._base_python(), *python.flags, "-c", "print(1)"], python,
             ("-c", "print(1)")),
    ]
    node = shutil.which("node")
    if node:
        out.append(Case("node -e 'console.log(1)'", [node, "-e", "console.log(1)"], _runtime.javascript(),
                        ("-e", "console.log(1)")))
    return out


def time_bare(argv) -> float:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        started = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin"}, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
        os.waitpid(pid, 0)
        return (time.perf_counter() - started) * 1000
    finally:
        os.close(devnull)


def time_sandboxed(case) -> float:
    started = time.perf_counter()
    outcome = _process.run_sync(_process.run_program(case.runtime, case.program))
    elapsed = (time.perf_counter() - started) * 1000
    if outcome.stats.exit_code != 0:
        raise SystemExit(f"{case.name} failed in the sandbox: {outcome.stderr[-500:]!r}")
    return elapsed


def p99(samples):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(runs: int):
    rows = []
    for case in cases():
        samples = {"bare": [], "native": []}
        for _ in range(3):  # warm caches before measuring
            time_bare(case.bare_argv)
            time_sandboxed(case)
        for _ in range(runs):
            samples["bare"].append(time_bare(case.bare_argv))
            samples["native"].append(time_sandboxed(case))
        bare, sandboxed = statistics.median(samples["bare"]), statistics.median(samples["native"])
        rows.append({
            "program": case.name,
            "bare_median_ms": round(bare, 2),
            "native_median_ms": round(sandboxed, 2),
            "native_p99_ms": round(p99(samples["native"]), 2),
            "overhead_ms": round(sandboxed - bare, 2),
            "ratio": round(sandboxed / bare, 2),
        })
    return rows


def print_table(rows, runs):
    print(f"# {runs} runs each, interleaved; {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}")
    header = ["program", "bare median ms", "native median ms", "native p99 ms", "overhead ms", "native/bare"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print(f"| {row['program']} | {row['bare_median_ms']:.2f} | {row['native_median_ms']:.2f} | "
              f"{row['native_p99_ms']:.2f} | {row['overhead_ms']:+.2f} | {row['ratio']:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jail.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs of each program on each side (default 100)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    rows = measure(args.runs)
    print_table(rows, args.runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
