"""The soak test (issue 11, DESIGN.md section 7; docs/soak.md): the real
service under real HTTP clients and mixed traffic, in waves of rising and
falling concurrency, with the invariants checked after every wave.

Plain `pytest` (so `make test`) runs the short form, about 90 s;
`make soak` runs 10 minutes (SOAK_SECONDS). SOAK_REPORT names the report
file (default: soak-report.md in a new temporary folder, the server's log
beside it); SOAK_SEED replays a run's traffic.
"""

import os
import pathlib
import random
import tempfile

import pytest

import soak_driver

SECONDS = float(os.environ.get("SOAK_SECONDS") or 90)


def _report_path() -> pathlib.Path:
    if os.environ.get("SOAK_REPORT"):
        path = pathlib.Path(os.environ["SOAK_REPORT"]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    return pathlib.Path(tempfile.mkdtemp(prefix="soak-")) / "soak-report.md"


@pytest.mark.timeout(SECONDS + 300)
def test_soak():
    report = _report_path()
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(2**32))
    soak = soak_driver.Soak(SECONDS, report, seed, say=lambda text: print(text, flush=True))
    failures = soak.run()
    print("\n" + report.read_text(), flush=True)
    assert not failures, (f"{len(failures)} invariant(s) broken (seed {seed}; report {report}; server log "
                          f"{soak.log_path}):\n" + "\n".join(failures))
