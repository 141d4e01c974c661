"""Benchmark: each backend side by side, in one run, in one table.

    make bench                       # or: python -m jail.bench [--runs N] [--json FILE]
    python -m jail.bench --launcher  # what the launcher adds to /usr/bin/env, python -c, node -e
    python -m jail.bench --load      # the service under hey at 1..64 connections: runs/s, p50/p99, pool misses
    python -m jail.bench --calls     # one building-block call's round trip in a warm sandbox (also in make bench)

For each language and each backend present, and for native's warm pool
("native-warm", the default pool: 4 per language, forked from zygotes): the bare interpreter's
start (the floor), the median and p99 wall time of jail.run("return 1+1"),
runs per second with 1 and 2 callers in parallel, then the median and the runs
per second (2 clients) through HTTP against a local server of that backend.
Runs interleave the backends round by round, so that drift of a shared machine
hits them alike; single runs are timed 15 ms apart, so that one does not pay
for the background work (refill, reaping) of the one before, which the
throughput bursts do. Ratios are to nsjail where it is present, else to bwrap.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import jail
from jail import _backends, _pool, _process, _runtime
from jail._errors import SandboxError

SNIPPET = "return 1+1"
QUIET = 0.015  # seconds between timed single runs (see measure())
ALL_BACKENDS = ("native", "bwrap", "nsjail")
WARM = "native-warm"
WARM_POOL = _pool.DEFAULT_SIZE  # warm sandboxes per language, as by default
# The warm column's own policy (uid range), so that only it is served by the pool.
WARM_POLICY = jail.Policy(uid_range=(204_096, 1024))
BARE = {
    "python": lambda: [_runtime._base_python(), *_runtime.python().flags, "-c", "pass"],
    "javascript": lambda: [shutil.which("node"), "-e", "0"],
}


def present_backends():
    present = []
    for name in ALL_BACKENDS:
        try:
            _backends.get(name)
            present.append(name)
        except SandboxError as exc:
            print(f"# {name}: skipped ({exc})", file=sys.stderr)
    return present + [WARM]


def policy_of(backend):
    return WARM_POLICY if backend == WARM else jail.Policy(backend=backend)


def time_bare(argv, env=None) -> float:
    """One start of argv with no sandbox, in the clean environment a sandbox gets."""
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env or {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    return (time.perf_counter() - started) * 1000


def time_run(language, backend) -> float:
    started = time.perf_counter()
    result = jail.run(SNIPPET, language, policy=policy_of(backend))
    elapsed = (time.perf_counter() - started) * 1000
    if result.output != 2:
        raise SystemExit(f"{backend}/{language} answered {result.output!r}")
    return elapsed


def rate(call, runs: int, callers: int) -> float:
    """Runs per second of call() with `callers` threads, `runs` calls in all."""
    share = [runs // callers + (i < runs % callers) for i in range(callers)]
    threads = [threading.Thread(target=lambda n=n: [call() for _ in range(n)]) for n in share]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return runs / (time.perf_counter() - started)


class Server:
    """python -m jail_http on a free loopback port, for one backend."""

    def __init__(self, backend, as_by_default=False):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        if as_by_default:  # the README's way: no setting at all
            env = {k: v for k, v in os.environ.items() if not k.startswith("JAIL_")}
        else:
            env = dict(os.environ, JAIL_BACKEND=backend.split("-")[0], JAIL_MAX_CONCURRENCY="2")
            pool = str(WARM_POOL) if backend == WARM else "0"  # every other column is cold
            env.update(JAIL_POOL_PYTHON=pool, JAIL_POOL_JAVASCRIPT=pool)
        self.process = subprocess.Popen([sys.executable, "-m", "jail_http", "--port", str(self.port)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit(f"the {backend} server did not start")
                time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


class HttpClient:
    """One keep-alive connection per thread, like a real client."""

    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def evaluate(self, language) -> float:
        import http.client

        if not hasattr(self.local, "conn"):
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        body = json.dumps({"code": SNIPPET, "language": language})
        started = time.perf_counter()
        self.local.conn.request("POST", "/evaluate", body, {"Content-Type": "application/json"})
        response = self.local.conn.getresponse()
        answer = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200 or json.loads(answer) != {"output": 2}:
            raise SystemExit(f"HTTP answered {response.status} {answer[:200]!r}")
        return elapsed


def p99(samples):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(runs: int, burst: int):
    backends = present_backends()
    languages = [lang for lang in jail.LANGUAGES if BARE[lang]()[0]]
    configs = [(lang, b) for lang in languages for b in backends]
    jail.warm_pool(policy=WARM_POLICY, python=WARM_POOL, javascript=WARM_POOL)
    servers = {b: Server(b) for b in backends}
    clients = {b: HttpClient(servers[b].port) for b in backends}
    samples = {c: {"bare": [], "run": [], "http": [], "rate1": [], "rate2": [], "http_rate2": []} for c in configs}
    try:
        for config in configs:  # warm caches: page cache, cgroups, server imports
            for _ in range(3):
                time_run(*config)
                clients[config[1]].evaluate(config[0])
        for round_number in range(runs):
            order = configs if round_number % 2 == 0 else configs[::-1]
            for language, backend in order:
                cell = samples[(language, backend)]
                # Single runs are timed on a quiet host: after the background work of the
                # one before (a warm pool's refill and reaping, 3 ms after its answer) is done.
                cell["bare"].append(time_bare(BARE[language]()))
                time.sleep(QUIET)
                cell["run"].append(time_run(language, backend))
                time.sleep(QUIET)
                cell["http"].append(clients[backend].evaluate(language))
                time.sleep(QUIET)
            if round_number % max(1, runs // 3) == 0:  # throughput: a few bursts spread over the run
                for language, backend in order:
                    cell = samples[(language, backend)]
                    cell["rate1"].append(rate(lambda: time_run(language, backend), burst, 1))
                    cell["rate2"].append(rate(lambda: time_run(language, backend), burst, 2))
                    cell["http_rate2"].append(rate(lambda: clients[backend].evaluate(language), burst, 2))
        idle_rss = idle_warm_rss()
    finally:
        for server in servers.values():
            server.stop()
        jail.warm_pool()
    reference = "nsjail" if "nsjail" in backends else "bwrap" if "bwrap" in backends else None
    rows = []
    for language, backend in configs:
        cell = samples[(language, backend)]
        rows.append({
            "language": language, "backend": backend,
            "bare_ms": statistics.median(cell["bare"]),
            "run_median_ms": statistics.median(cell["run"]), "run_p99_ms": p99(cell["run"]),
            "runs_per_s_1": statistics.median(cell["rate1"]), "runs_per_s_2": statistics.median(cell["rate2"]),
            "http_median_ms": statistics.median(cell["http"]), "http_p99_ms": p99(cell["http"]),
            "http_runs_per_s_2": statistics.median(cell["http_rate2"]),
        })
    for row in rows:
        ref = next((r for r in rows if r["language"] == row["language"] and r["backend"] == reference), None)
        row["reference"] = reference
        row["latency_vs_reference"] = row["run_median_ms"] / ref["run_median_ms"] if ref else None
        row["throughput_vs_reference"] = row["runs_per_s_2"] / ref["runs_per_s_2"] if ref else None
        row["http_throughput_vs_reference"] = row["http_runs_per_s_2"] / ref["http_runs_per_s_2"] if ref else None
    return rows, idle_rss


def idle_warm_rss() -> dict:
    """Per language, MiB: an idle warm sandbox's own memory (its private pages,
    the median over the pool: what one more costs) and, where its sandboxes are
    forked, its zygote's resident memory (shared by all of them)."""
    from jail import _pool

    def private_kib(pid):
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))

    def resident_kib(pid):
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    sizes = {}
    for language in jail.LANGUAGES:
        own = [private_kib(pid) / 1024 for pid in _pool.POOL.idle_pids_of(language)]
        if own:
            sizes[language] = {"sandbox": round(statistics.median(own), 1)}
            zygote = _pool.POOL.zygote_pid(language)
            if zygote is not None:
                sizes[language]["zygote"] = round(resident_kib(zygote) / 1024, 1)
    return sizes


def machine() -> str:
    return (f"{platform.node()}, {os.cpu_count()} cores, Linux {platform.release()}, Python "
            f"{platform.python_version()}, node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip() if shutil.which('node') else '-'}")


def print_table(rows, runs, burst):
    reference = rows[0]["reference"] if rows else None
    print(f"# jail.run({SNIPPET!r}): {runs} interleaved runs per cell, throughput bursts of {burst}; {machine()}")
    header = ["language", "backend", "bare start ms", "run median ms", "run p99 ms", "runs/s x1", "runs/s x2",
              "HTTP median ms", "HTTP p99 ms", "HTTP runs/s x2",
              f"latency / {reference}", f"runs/s / {reference}", f"HTTP runs/s / {reference}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")

    def ratio(value):
        return f"{value:.2f}" if value is not None else "-"

    for r in rows:
        print(f"| {r['language']} | {r['backend']} | {r['bare_ms']:.1f} | {r['run_median_ms']:.1f} | "
              f"{r['run_p99_ms']:.1f} | {r['runs_per_s_1']:.0f} | {r['runs_per_s_2']:.0f} | "
              f"{r['http_median_ms']:.1f} | {r['http_p99_ms']:.1f} | {r['http_runs_per_s_2']:.0f} | "
              f"{ratio(r['latency_vs_reference'])} | {ratio(r['throughput_vs_reference'])} | "
              f"{ratio(r['http_throughput_vs_reference'])} |")


# -- what the launcher itself adds (python -m jail.bench --launcher) ---------------------------

def launcher_cases():
    cases = [("/usr/bin/env", ["/usr/bin/env"], _runtime.binary("/usr/bin/env"), ()),
             ("python3 -c 'print(1)'", [_runtime._base_python(), *_runtime.python().flags, "-c", "print(1)"],
              _runtime.python(), ("-c", "print(1)"))]
    if shutil.which("node"):
        cases.append(("node -e 'console.log(1)'", [shutil.which("node"), "-e", "console.log(1)"],
                      _runtime.javascript(), ("-e", "console.log(1)")))
    return cases


def measure_launcher(runs: int):
    rows = []
    for name, bare_argv, runtime, program in launcher_cases():
        bare, boxed = [], []
        for i in range(runs + 3):
            b = time_bare(bare_argv)
            started = time.perf_counter()
            outcome = _process.run_sync(_process.run_program(runtime, program))
            s = (time.perf_counter() - started) * 1000
            if outcome.stats.exit_code != 0:
                raise SystemExit(f"{name} failed in the sandbox: {outcome.stderr[-300:]!r}")
            if i >= 3:
                bare.append(b)
                boxed.append(s)
        rows.append({"program": name, "bare_median_ms": statistics.median(bare),
                     "native_median_ms": statistics.median(boxed), "native_p99_ms": p99(boxed)})
    print(f"# launcher: {runs} interleaved runs each; {machine()}")
    print("| program | bare median ms | native median ms | native p99 ms | overhead ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['program']} | {r['bare_median_ms']:.2f} | {r['native_median_ms']:.2f} | "
              f"{r['native_p99_ms']:.2f} | {r['native_median_ms'] - r['bare_median_ms']:+.2f} |")
    return rows


LOAD_LEVELS = (1, 2, 4, 8, 16, 32, 64)


def scrape(port) -> dict:
    """The service's /metrics as {"name{labels}": value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def hey(port, language, connections, seconds) -> dict:
    """hey against POST /evaluate: runs/s, p50 and p99 ms, answers by status."""
    import re
    import tempfile

    hey_path = shutil.which("hey")
    if hey_path is None:
        raise SystemExit("--load needs hey (Debian package `hey`; `make setup` installs it)")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body:
        json.dump({"code": SNIPPET, "language": language}, body)
        body.flush()
        out = subprocess.run([hey_path, "-z", f"{seconds}s", "-c", str(connections), "-m", "POST",
                              "-T", "application/json", "-D", body.name, f"http://127.0.0.1:{port}/evaluate"],
                             capture_output=True, text=True, check=True).stdout
    found = {"runs_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for name, quantile in (("p50_ms", "50"), ("p99_ms", "99")):
        match = re.search(rf"{quantile}% in ([\d.]+) secs", out)
        found[name] = round(float(match.group(1)) * 1000, 2) if match else None
    found["status"] = {int(code): int(count) for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    return found


def measure_load(seconds: int, levels=LOAD_LEVELS) -> list:
    """The service started as `make serve` starts it, driven by hey at each
    level for each language; pool misses and cold starts per level from its
    /metrics."""
    server = Server("native", as_by_default=True)
    rows = []
    try:
        for language in jail.LANGUAGES:  # first runs start each language's pool
            for _ in range(20):
                HttpClient(server.port).evaluate(language)
            time.sleep(1)
            for level in levels:
                before = scrape(server.port)
                found = hey(server.port, language, level, seconds)
                after = scrape(server.port)
                label = f'{{language="{language}"}}'
                delta = {name: after.get(f"jail_pool_{name}_total{label}", 0) - before.get(f"jail_pool_{name}_total{label}", 0)
                         for name in ("hits", "misses", "cold")}
                ok = found["status"].get(200, 0)
                rows.append({"language": language, "connections": level, **found, "ok": ok,
                             "overloaded": found["status"].get(429, 0),
                             "other": sum(n for code, n in found["status"].items() if code not in (200, 429)),
                             "pool_misses": int(delta["misses"]), "pool_cold": int(delta["cold"]),
                             "pool_size": int(after.get(f"jail_pool_size{label}", 0))})
                time.sleep(1)  # the pool refills between levels
    finally:
        server.stop()
    return rows


def print_load_table(rows, seconds):
    print(f"# `make bench BENCH_ARGS=--load` on {machine()}, {time.strftime('%Y-%m-%d')}: the service as `make serve`"
          f" starts it, hey -z {seconds}s at each level, snippet {SNIPPET!r}")
    print("| language | connections | runs/s | p50 ms | p99 ms | p99/p50 | 200 | 429 | other | pool misses | cold | pool size |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratio = round(row["p99_ms"] / row["p50_ms"], 1) if row["p50_ms"] and row["p99_ms"] else None
        print(f"| {row['language']} | {row['connections']} | {row['runs_s']:.0f} | {row['p50_ms']} | {row['p99_ms']} | "
              f"{ratio} | {row['ok']} | {row['overloaded']} | {row['other']} | {row['pool_misses']} | "
              f"{row['pool_cold']} | {row['pool_size']} |")


CALL_SNIPPETS = {  # n calls of f, each timed inside the snippet: the round trip as the snippet sees it
    "python": "import time\nout = []\nfor i in range(n):\n    t = time.perf_counter_ns()\n    f(i)\n"
              "    out.append(time.perf_counter_ns() - t)\nreturn out",
    "javascript": "const out = [];\nfor (let i = 0; i < n; i++) {\n  const t = process.hrtime.bigint();\n"
                  "  await f(i);\n  out.push(Number(process.hrtime.bigint() - t));\n}\nreturn out",
}


def measure_calls(runs: int = 20, per_run: int = 50) -> list:
    """Per language, in warm sandboxes: the median and p99 of one call of a
    block (an async one, and a sync one, which runs on a thread), beside the
    run's own latency (jail.run("return 1+1"))."""
    async def echo_async(x):
        return x

    def echo_sync(x):
        return x

    jail.warm_pool(policy=WARM_POLICY, python=WARM_POOL, javascript=WARM_POOL)
    rows = []
    try:
        for language in jail.LANGUAGES:
            if not BARE[language]()[0]:
                continue
            row = {"language": language}
            runs_ms = []
            for _ in range(runs):
                started = time.perf_counter()
                jail.run(SNIPPET, language, policy=WARM_POLICY)
                runs_ms.append((time.perf_counter() - started) * 1000)
                time.sleep(QUIET)
            row["run_p50_ms"] = round(statistics.median(runs_ms), 3)
            for kind, function in (("async", echo_async), ("sync", echo_sync)):
                calls_ms, warm = [], True
                for _ in range(runs):
                    result = jail.run(CALL_SNIPPETS[language], language, {"n": per_run}, policy=WARM_POLICY,
                                      functions={"f": function})
                    warm = warm and result.stats.warm
                    calls_ms += [ns / 1e6 for ns in result.output[5:]]  # the first calls warm the path up
                    time.sleep(QUIET)
                row[f"{kind}_call_p50_ms"] = round(statistics.median(calls_ms), 3)
                row[f"{kind}_call_p99_ms"] = round(p99(calls_ms), 3)
                row["warm"] = warm
            rows.append(row)
    finally:
        jail.warm_pool(policy=WARM_POLICY)
    return rows


def print_calls_table(rows):
    print("\n# one call of a building block, warm (timed in the snippet: frame out, host call, reply in)")
    print("| language | run p50 ms | async call p50 ms | p99 ms | sync call p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['language']} | {row['run_p50_ms']} | {row['async_call_p50_ms']} | {row['async_call_p99_ms']} | "
              f"{row['sync_call_p50_ms']} | {row['sync_call_p99_ms']} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jail.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="interleaved rounds (default 40)")
    parser.add_argument("--burst", type=int, default=20, help="runs per throughput burst (default 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--launcher", action="store_true", help="only what the launcher adds to a bare program")
    parser.add_argument("--load", action="store_true", help="only the service under hey at 1..64 connections")
    parser.add_argument("--seconds", type=int, default=10, help="--load: seconds of hey per level (default 10)")
    parser.add_argument("--calls", action="store_true", help="only one building-block call's round trip, warm")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.burst < 2:
        parser.error("--runs must be at least 1 and --burst at least 2")
    call_rows = None
    if args.calls:
        rows = call_rows = measure_calls()
        print_calls_table(call_rows)
    elif args.load:
        rows = measure_load(args.seconds)
        print_load_table(rows, args.seconds)
    elif args.launcher:
        rows = measure_launcher(args.runs)
    else:
        rows, idle_rss = measure(args.runs, args.burst)
        print_table(rows, args.runs, args.burst)
        print("# an idle warm sandbox's own memory (its private pages): " + ", ".join(
            f"{k} {v['sandbox']} MiB" + (f" (its zygote: {v['zygote']} MiB resident, shared)" if "zygote" in v else "")
            for k, v in idle_rss.items()))
        call_rows = measure_calls()
        print_calls_table(call_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "runs": args.runs, "rows": rows,
                       "idle_warm_rss_mib": None if args.launcher or args.load or args.calls else idle_rss,
                       "calls": call_rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
