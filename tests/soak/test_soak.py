"""A minute of the chaos soak on Redis, with a fixed seed (`make soak` runs it longer, on both
brokers): every accepted job finishes, succeeded jobs applied once, failed ones left nothing,
no 5xx but a 503 with Retry-After, one job per Idempotency-Key."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.soak.chaos import KINDS
from tests.soak.run import Options, run_soak

pytestmark = pytest.mark.e2e

SEED = 20261201
SECONDS = 60


@pytest.mark.timeout(240)
def test_a_minute_of_chaos_on_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the soak needs a broker it may restart")
    # Outside pytest's temporary tree: as root, the embedded PostgreSQL runs as another user,
    # whom the tree's permissions must let in, and each new pytest session tightens them.
    workdir = Path(tempfile.mkdtemp(prefix="timebatch-soak-test-"))
    report = run_soak(Options(SECONDS, SEED, "redis", workdir))
    print("\n".join(report.lines()))
    if report.ok:
        shutil.rmtree(workdir, ignore_errors=True)  # kept otherwise, for its logs

    assert not report.crashes, "the soak itself failed"
    # The run did what a soak is for: many jobs, and every kind of fault hit something.
    faults = Counter(f.kind for f in report.faults if not f.skipped)
    assert set(faults) == set(KINDS), faults
    assert len(report.records) >= 100

    checks = report.checks
    assert checks.unfinished == [], "an accepted job never finished"
    assert not checks.lost and not checks.lost_by_tag, "a succeeded job's entries are gone"
    assert not checks.doubled, "a job was applied twice"
    assert not checks.stray and not checks.diverged, "the entries differ from the model"
    assert not checks.traces, "a failed job left a trace"
    assert not checks.keys, "an Idempotency-Key has no job, another job, or a second one"
    assert [v.line() for v in report.violations] == []
    assert report.ok
