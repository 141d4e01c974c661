"""Chaos: faults injected into the live service under a steady load of real
clients (docs/chaos.md). Each case proves its fault happened, then expects the
service to go on answering right, to recover by itself, to say what happened,
to leak nothing, and to end on SIGTERM in time leaving nothing."""

import concurrent.futures
import json
import os
import re
import signal
import time
import uuid

import pytest

import live
from jail._supervise import RECENT
from live import LANGUAGES, Handle, Verdict, finish, pool_whole, steady, time_to, wait_for

pytestmark = pytest.mark.needs_root  # zygotes, host uids and cgroups are a root server's

RECOVERY_S = 3.0  # "a second or two", plus a margin for a shared two-core host
KILLED_S = 1.0  # a process sent SIGKILL is gone (and its waiters told) within this
BLOCK_SIZE = 128  # jail/_zygote.py: the uids of one zygote's children
SLOW = {  # a run that sleeps for the given seconds, then returns "slow"
    "python": "import time\ntime.sleep({s})\nreturn 'slow'",
    "javascript": "await new Promise(done => setTimeout(done, {s} * 1000)); return 'slow'",
}

_threads = concurrent.futures.ThreadPoolExecutor(max_workers=8)


def send(service, body, request_id=None):
    """POST /evaluate on a thread of its own: a future of (status, body, monotonic time answered)."""
    headers = {"X-Request-Id": request_id} if request_id else None

    def call():
        status, answer = service.evaluate(body, headers=headers, timeout=live.ANSWER_TIMEOUT_S)
        return status, answer, time.monotonic()

    return _threads.submit(call)


def waiting_children(service, zygote, language, settle=0.5) -> list:
    """Children of the zygote that wait on a timer (a sleeping snippet) now and
    still settle s later: the load's runs take milliseconds and never sleep."""
    def waiting():
        return {proc.pid: proc.syscall() for proc in service.children_of(zygote)
                if proc.state == "S" and proc.cmdline and proc.syscall() in live.TIMER_WAIT[language]}

    first = waiting()
    time.sleep(settle)
    second = waiting()
    return [proc for proc in service.children_of(zygote) if proc.pid in first and proc.pid in second]


def memory_group(pid):
    """The name of the process's memory cgroup (the server's "<pid>-<n>")."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(",") or controllers == "":
                return path.rsplit("/", 1)[-1]
    return None


def group_exists(service, name):
    return any(name in names for names in service.cgroups().values())


def said(lines, *patterns):
    """The lines (of what the server logged) that match every pattern (case-insensitive)."""
    return [line for line in lines if all(re.search(p, line, re.I) for p in patterns)]


# -- 1. a zygote killed mid-load ----------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_a_zygote_killed_mid_load(service, load, language):
    """Its children die with it: a run in flight in one is answered right or a
    500 SandboxError naming the zygote, never the snippet's 422; a new zygote
    serves the pool within a second or two, and the log says what happened."""
    verdict = Verdict()
    steady(load)
    zygote = Handle(service.zygotes()[language])
    slow = send(service, {"code": SLOW[language].format(s=2), "language": language})
    in_flight = wait_for(lambda: waiting_children(service, zygote.pid, language, 0.3), 5)
    assert in_flight, "the slow run never started in a child of the zygote"
    children = [Handle(proc.pid) for proc in service.children_of(zygote.pid)]
    # The kill lands while the pool waits on the zygote for forks, as it does most of
    # the time under load: a frozen zygote makes that timing certain rather than likely.
    os.kill(zygote.pid, signal.SIGSTOP)
    time.sleep(0.3)
    killed_at = time.monotonic()
    zygote.kill()
    assert wait_for(zygote.exited, KILLED_S), f"the zygote {zygote.pid} outlived SIGKILL"
    verdict.expect(wait_for(lambda: all(child.exited() for child in children), KILLED_S),
                   "children of the killed zygote outlived it")

    status, body, answered_at = slow.result(timeout=live.ANSWER_TIMEOUT_S)
    verdict.expect(status == 500 and body["error"]["type"] == "SandboxError"
                   and f"{language} zygote" in body["error"]["message"],
                   f"the run in flight in a child of the killed zygote was answered {status} {body}")
    verdict.expect(answered_at - killed_at < KILLED_S + 0.5,
                   f"the run in flight was answered {answered_at - killed_at:.2f} s after the kill")

    seen = []
    cold = service.metric("jail_pool_cold_total", language=language)
    recovered = time_to(lambda: pool_whole(service, [language], old_zygotes=[zygote.pid], seen=seen), killed_at, 10)
    verdict.measured["recovery_s"] = recovered and round(recovered, 2)
    verdict.measured["went_cold_meanwhile"] = service.metric("jail_pool_cold_total", language=language) - cold
    verdict.expect(recovered is not None and recovered <= RECOVERY_S,
                   f"a new {language} zygote served a full pool {recovered} s after the kill "
                   f"(expected within {RECOVERY_S} s); /readyz answered meanwhile: {seen}")
    load.pause()
    failed = []
    for answer in load.wrong():
        lost = (answer.status == 500 and answer.error().get("type") == "SandboxError"
                and f"{language} zygote" in answer.error().get("message", "") and answer.language == language)
        if lost:
            failed.append(answer)
        else:
            verdict.expect(False, f"a load run was answered wrong: {answer}")
    verdict.measured["load_runs_lost_with_the_zygote"] = len(failed)
    errors = service.metric("jail_requests_total", language=language, outcome="sandbox_error")
    verdict.expect(errors == len(failed) + 1,
                   f"jail_requests_total says {errors} {language} sandbox errors; the clients got {len(failed) + 1}")
    told = service.told(killed_at)
    verdict.expect(said(told, "zygote", r"died|exited|killed|signal|lost"),
                   f"nothing in the server's log says that the {language} zygote (pid {zygote.pid}) died; "
                   f"it logged, besides request lines: {told[:20]}")
    zygote.close()
    print(finish(service, load, verdict))


# -- 2. an idle warm sandbox killed ---------------------------------------------------------------

def test_an_idle_warm_sandbox_killed(service, load):
    """The pool finds it dead, discards it (its cgroup goes) and makes another;
    no request fails because of it."""
    verdict = Verdict()
    steady(load)
    zygote = service.zygotes()["python"]

    def newest_idle():  # the last one in the pool's queue: the last to be taken
        idle = service.idle_children(zygote)
        return max(idle, key=lambda proc: live.start_time(proc.pid)) if len(idle) >= 3 else None

    victim = wait_for(newest_idle, 5)
    assert victim is not None, "the python zygote never had 3 idle children"
    group = memory_group(victim.pid)
    handle = Handle(victim.pid)
    assert group and group_exists(service, group), f"the idle child {victim.pid} has no group of the server's"
    assert victim.syscall() == live.READ_SYSCALL, "the child was taken by a run before it could be killed"
    killed_at = time.monotonic()
    handle.kill()
    assert wait_for(handle.exited, KILLED_S), f"the idle child {victim.pid} outlived SIGKILL"
    handle.close()
    discarded = time_to(lambda: not group_exists(service, group), killed_at, 10)
    verdict.measured["discarded_s"] = discarded and round(discarded, 2)
    verdict.expect(discarded is not None and discarded <= RECOVERY_S,
                   f"the dead sandbox's group {group} was still there {discarded} s after the kill")
    recovered = time_to(lambda: pool_whole(service, ["python"]), killed_at, 10)
    verdict.measured["recovery_s"] = recovered and round(recovered, 2)
    verdict.expect(recovered is not None and recovered <= RECOVERY_S,
                   f"the pool was whole again {recovered} s after the kill")
    verdict.expect(service.zygotes().get("python") == zygote, "the python zygote changed")
    load.pause()
    for answer in load.wrong():
        verdict.expect(False, f"a load run was answered wrong: {answer}")
    told = service.told(killed_at)
    verdict.expect(said(told, r"sandbox|child", r"died|dead|exited|killed|signal|discard"),
                   f"nothing in the server's log says that an idle warm sandbox (pid {victim.pid}) died; "
                   f"it logged, besides request lines: {told[:20]}")
    print(finish(service, load, verdict, warm=["python"]))


# -- 3. a running sandbox killed ------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_a_running_sandbox_killed(service, load, language):
    """Its request gets a clear answer at once: 422 ExecutionError, name
    ExitError, "killed by signal 9" (what the host sees: its pid 1 ended by
    SIGKILL, with no result); every other request goes on."""
    verdict = Verdict()
    steady(load)
    zygote = service.zygotes()[language]
    request_id = f"chaos-{uuid.uuid4().hex[:12]}"
    sleeper = send(service, {"code": SLOW[language].format(s=3), "language": language}, request_id)
    found = wait_for(lambda: waiting_children(service, zygote, language), 5)
    assert found and len(found) == 1, f"the sleeping run was not found alone among the zygote's children: {found}"
    [child] = found
    group = memory_group(child.pid)
    handle = Handle(child.pid)
    killed_at = time.monotonic()
    handle.kill()
    assert wait_for(handle.exited, KILLED_S), f"the running sandbox {child.pid} outlived SIGKILL"
    handle.close()

    status, body, answered_at = sleeper.result(timeout=live.ANSWER_TIMEOUT_S)
    verdict.measured["answered_s"] = round(answered_at - killed_at, 3)
    error = body.get("error", {})
    verdict.expect(status == 422 and error.get("type") == "ExecutionError" and error.get("name") == "ExitError"
                   and "killed by signal 9" in error.get("message", ""),
                   f"the killed run was answered {status} {body}")
    verdict.expect(answered_at - killed_at < KILLED_S,
                   f"the killed run was answered {answered_at - killed_at:.2f} s after the kill")
    verdict.expect(wait_for(lambda: not group_exists(service, group), RECOVERY_S),
                   f"the killed sandbox's group {group} is still there")
    recovered = time_to(lambda: pool_whole(service, [language]), killed_at, 10)
    verdict.measured["recovery_s"] = recovered and round(recovered, 2)
    verdict.expect(recovered is not None and recovered <= RECOVERY_S, f"the pool was whole {recovered} s after")
    load.pause()
    for answer in load.wrong():
        verdict.expect(False, f"a load run was answered wrong: {answer}")
    lines = [line for line in service.request_lines() if line["request_id"] == request_id]
    verdict.expect(len(lines) == 1 and lines[0]["status"] == 422 and lines[0]["outcome"] == "execution_error",
                   f"the log's line for the killed run: {lines}")
    print(finish(service, load, verdict, warm=[language]))


# -- 4. a zygote's uids all taken -----------------------------------------------------------------

def test_more_runs_at_once_than_a_zygote_has_uids(make_service):
    """Every sandbox has a host uid of its own; a zygote's children take theirs
    from its block of 128. With more python runs at once than that (the
    service's concurrency raised above its default of one per core, which
    alone keeps it far below), the extra ones wait for a fork, then start cold
    on uids of their own: all answered right, none hangs, nothing leaks, and
    the pool is warm again once they end."""
    service = make_service(max_concurrency=300)
    load = live.Load(service).start()
    verdict = Verdict()
    try:
        steady(load)
        count, seconds = BLOCK_SIZE + 22, 3
        cold_before = service.metric("jail_pool_cold_total", language="python")
        burst_at = time.monotonic()
        burst = concurrent.futures.ThreadPoolExecutor(max_workers=count)

        def call(i):
            try:
                status, body = service.evaluate({"code": f"import time\ntime.sleep({seconds})\nreturn {i}"}, timeout=30)
            except OSError as exc:
                status, body = None, f"{type(exc).__name__}: {exc}"
            return status, body, time.monotonic()

        runs = [burst.submit(call, i) for i in range(count)]
        zygote = service.zygotes()["python"]
        peak_children = peak_python = 0
        while not all(run.done() for run in runs) and time.monotonic() - burst_at < 30:
            for _ in range(5):
                peak_children = max(peak_children, service.child_count(zygote))
                time.sleep(0.02)
            peak_python = max(peak_python, sum(proc.language == "python" for proc in service.sandboxes()))
        # A child that has ended keeps its uid until the host has read its end: the
        # zygote may be out of uids with a child or two fewer than its block.
        assert BLOCK_SIZE - 3 <= peak_children <= BLOCK_SIZE, (
            f"the python zygote had at most {peak_children} children at once")
        assert peak_python > BLOCK_SIZE, f"at most {peak_python} python sandboxes at once"
        verdict.measured.update(peak_zygote_children=peak_children, peak_python_sandboxes=peak_python)
        for i, run in enumerate(runs):
            try:
                status, body, answered_at = run.result(timeout=1)
            except concurrent.futures.TimeoutError:
                verdict.expect(False, f"run {i} of the burst was not answered within 30 s")
                continue
            verdict.expect((status, body) == (200, {"output": i}), f"run {i} of the burst was answered {status} {body}")
            verdict.expect(answered_at - burst_at < seconds + 6,
                           f"run {i} of the burst was answered after {answered_at - burst_at:.1f} s")
        ended_at = time.monotonic()
        verdict.measured["burst_s"] = round(ended_at - burst_at, 2)
        logged = [line for line in service.request_lines(burst_at) if line["language"] == "python"]
        verdict.expect(sum(line["status"] == 200 and line["outcome"] == "ok" for line in logged) >= count,
                       f"the log has {len(logged)} python request lines since the burst, for its {count} runs")
        cold = service.metric("jail_pool_cold_total", language="python") - cold_before
        verdict.expect(cold >= peak_python - BLOCK_SIZE,
                       f"jail_pool_cold_total grew by {cold} for {peak_python - BLOCK_SIZE} runs beyond the block")
        recovered = time_to(lambda: pool_whole(service, ["python"]), ended_at, 10)
        verdict.measured["recovery_s"] = recovered and round(recovered, 2)
        verdict.expect(recovered is not None and recovered <= RECOVERY_S,
                       f"the pool was whole {recovered} s after the burst ended")
        load.pause()
        for answer in load.wrong():
            verdict.expect(False, f"a load run was answered wrong: {answer}")
        burst.shutdown(wait=False)
        print(finish(service, load, verdict))
    finally:
        load.stop()


# -- 5. cgroup creation failing --------------------------------------------------------------------

FAULT_S = 3.0  # how long cgroups cannot be made
# /readyz names a background thread as degraded for RECENT s after its last failure.
FAULT_RECOVERY_S = RECENT + RECOVERY_S


def refill_errors(service) -> float:
    """Background errors of the pool's refill threads (one per language)."""
    return sum(service.metric("jail_background_errors_total", thread=f"jail-warm-pool-{language}")
               for language in LANGUAGES)


def test_cgroups_cannot_be_made_for_a_while(service, load):
    """Every new group of the server's fails to be made (mkdir: EEXIST, its
    next names are taken): runs that find no warm sandbox get a fast 500
    SandboxError naming the step, /readyz says the pool is degraded, the log
    and metrics say why; once the names are free again, everything recovers
    by itself."""
    verdict = Verdict()
    steady(load)
    parent = live.CGROUP_PARENTS[0]  # the first hierarchy a group is made in
    errors_before = refill_errors(service)
    taken = []
    try:
        # The server names its groups "<its pid>-<n>", n counting up: take the next 3000.
        first = 1 + max(int(name.split("-")[1]) for names in service.cgroups().values() for name in names)
        for n in range(first, first + 3000):
            try:
                os.mkdir(f"{parent}/{service.pid}-{n}")
                taken.append(f"{service.pid}-{n}")
            except FileExistsError:
                pass  # the server made it just now
        fault_at = time.monotonic()
        degraded = []
        while time.monotonic() - fault_at < FAULT_S:
            status, body = service.readyz()
            if status == 503:
                degraded.append(body)
            time.sleep(0.2)
        metrics_in_fault = service.metrics()
        last = int(taken[-1].split("-")[1])
        beyond = [name for name in service.cgroups()[parent] if int(name.split("-")[1]) > last]
    finally:
        stuck = []
        for name in taken:  # none holds a process: the server never got to use them
            try:
                os.rmdir(f"{parent}/{name}")
            except OSError as exc:
                stuck.append(f"{name}: {exc}")
    ended_at = time.monotonic()
    assert not stuck, f"groups the test made could not be removed: {stuck[:5]}"
    assert not beyond, f"the server went past the names the test took (the fault ended early): {beyond[:5]}"

    seen = []
    recovered = time_to(lambda: pool_whole(service, seen=seen), ended_at, 15)
    verdict.measured["recovery_s"] = recovered and round(recovered, 2)
    verdict.expect(recovered is not None and recovered <= FAULT_RECOVERY_S,
                   f"the pool was whole and /readyz 200 {recovered} s after the fault ended; "
                   f"/readyz answered meanwhile: {seen}")
    load.pause()
    refused = []
    for answer in load.wrong():
        message = answer.error().get("message", "")
        names = re.findall(r"File exists: '.*/([0-9]+-[0-9]+)'$", message)
        if answer.status == 500 and answer.error().get("type") == "SandboxError" and names and names[0] in taken:
            refused.append(answer)
            verdict.expect(message.startswith("create cgroup: "), f"a refused run does not name the step: {answer}")
            verdict.expect(answer.done - answer.sent < 3, f"a refused run waited {answer.done - answer.sent:.2f} s")
            verdict.expect(answer.sent < ended_at, f"a run sent after the fault was refused: {answer}")
        else:
            verdict.expect(False, f"a load run was answered wrong: {answer}")
    assert refused, f"no run was refused during the fault: {len(load.between(fault_at, ended_at))} answered right"
    verdict.measured.update(runs_in_fault=len(load.between(fault_at, ended_at)), refused=len(refused))
    verdict.expect(any(any("pool" in part for part in body.get("degraded", {})) for body in degraded),
                   f"/readyz never said the pool was degraded during the fault: {degraded[:3]}")
    verdict.expect(metrics_in_fault.get('jail_degraded{part="warm pool"}') == 1,
                   'jail_degraded{part="warm pool"} was not 1 during the fault')
    errors = refill_errors(service) - errors_before
    verdict.measured["background_errors"] = errors
    verdict.expect(errors >= 1, 'jail_background_errors_total{thread="jail-warm-pool-<language>"} did not grow')
    told = "\n".join(service.told(fault_at))
    verdict.expect(re.search(r"create cgroup: \[Errno 17\] File exists: '.*/(" + "|".join(taken) + ")'", told),
                   f"the log does not name the failed step and group: {told[:2000]}")
    print(finish(service, load, verdict))


# -- 6. a sandbox that fills its space --------------------------------------------------------------

FILL_TMP = "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'x' * 65536)"
FILL_MEMORY = {
    "python": "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))",
    "javascript": "const chunks = []; while (true) chunks.push(new Float64Array(1 << 17).fill(1.5));",
}


def test_a_run_that_fills_its_space_affects_only_itself(service, load):
    """The service's sandboxes have no scratch tmpfs to fill (the default
    policy: scratch_mb=0): the write is refused at open, the snippet's own
    error. Filling what a sandbox does have, its memory, is that run's own
    MemoryLimitExceeded; the runs beside it and after it are fine."""
    verdict = Verdict()
    steady(load)
    started_at = time.monotonic()
    status, body = service.evaluate({"code": FILL_TMP})
    verdict.expect(status == 422 and body["error"]["type"] == "ExecutionError"
                   and body["error"]["message"] == "PermissionError: [Errno 1] Operation not permitted: '/tmp/fill'",
                   f"writing /tmp was answered {status} {body}")
    for language, code in FILL_MEMORY.items():
        for _ in range(2):
            status, body = service.evaluate({"code": code, "language": language})
            verdict.expect(status == 422 and body["error"]["type"] == "MemoryLimitExceeded",
                           f"filling the memory of a {language} sandbox was answered {status} {json.dumps(body)[:300]}")
            status, body = service.evaluate({"code": "return 6 * 7", "language": language})
            verdict.expect((status, body) == (200, {"output": 42}), f"the next {language} run: {status} {body}")
    time.sleep(0.5)
    load.pause()
    for answer in load.wrong():
        verdict.expect(False, f"a load run was answered wrong: {answer}")
    outcomes = [line["outcome"] for line in service.request_lines(started_at) if line["status"] == 422]
    verdict.expect(sorted(outcomes) == ["execution_error"] + ["memory_limit"] * 4, f"the log's outcomes: {outcomes}")
    print(finish(service, load, verdict))
