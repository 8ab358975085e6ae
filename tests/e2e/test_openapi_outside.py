"""schemathesis' own command line against a real gunicorn: the OpenAPI document and the app
agree both ways, every limit the app enforces declared, every constraint declared enforced.

The web tier is the one `timebatch run` starts, on a free port and a database of its own
holding the demo data and jobs in every state; its job messages go to a queue no worker
reads, so the jobs the run submits stay queued. `st run` sends valid and invalid requests to
every operation with `--checks all`, each with both headers that authenticate an admin of
the demo organization, path ids drawn from existing resources part of the time. The run
must end without a failure or an error of any kind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bench.stack import child_env, control_socket, free_port, start_child, wait_http
from shared.devstack.supervisor import stack_commands
from shared.settings import Settings
from tests.conftest import _drop, _recreate_database, demo_engine, purge, token_for
from tests.e2e.fuzzing import ADMIN, KNOWN_IDS, SeededWebhooks, ended, seed_jobs, seed_webhooks

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
# Per operation and phase: the run, four phases over 26 operations, takes some 40 s (more
# with the web measured for coverage).
MAX_EXAMPLES = 20
# Fixed, so that a failure here is a failure on the next run too; `st run --seed` replays it.
SEED = 20260301
CHECKS = [
    "--checks", "all",
    # Replaced by the hooks' positive_data_acceptance_but_state, which alone lets a valid
    # request be refused for what no schema can foresee: a reused key, an id named twice, a
    # result that retention deleted.
    "--exclude-checks", "positive_data_acceptance",
    # A DELETE with a path id here is a job's, and it cancels the job, which stays readable.
    "--exclude-checks", "use_after_free",
]  # fmt: skip
# schemathesis' own list, and 413: how a batch above maxItems is refused, as documented.
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]  # fmt: skip
# The path parameters aimed at existing resources, by operation id: the dictionary's name.
AIMED = {
    "showTimeEntry": "time_entries",
    "showPerson": "people",
    "showService": "services",
    "showTask": "tasks",
    "showJob": "jobs",
    "cancelJob": "jobs",
    "showJobResult": "jobs",
    # Only jobs that ended: a stream of one that runs stays open (schemathesis_hooks.py).
    "streamJobEvents": "ended_jobs",
    "showWebhook": "webhooks",
    "updateWebhook": "webhooks",
    "listWebhookDeliveries": "webhooks",
    # Endpoints of their own: the reads keep finding theirs.
    "deleteWebhook": "doomed_webhooks",
}
JOB_DICTIONARIES = frozenset({"jobs", "ended_jobs"})


@dataclass
class Web:
    url: str
    headers: dict[str, str]
    job_ids: list[str]
    webhooks: SeededWebhooks


@pytest.fixture(scope="module")
def web(
    servers: tuple[str, str],
    settings: Settings,
    run_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Web]:
    workdir = tmp_path_factory.mktemp("outside")
    own = dataclasses.replace(
        settings,
        database_url=_recreate_database(servers[0], f"timebatch_outside_{run_id}"),
        data_dir=workdir,
        port=free_port(),
        queue=f"{settings.queue}-outside",
        # Nothing runs the jobs the run submits: they pile up, and the run is not about
        # the organization's limits.
        org_max_unfinished=10**6,
        org_max_unfinished_entries=10**10,
        # Prefer: wait would hold each request as long as it asks, for jobs that never run;
        # without capacity to wait, the app ignores the preference, as RFC 7240 allows.
        wait_capacity=0,
        # The document declares it (maxItems): small, the run's longest batches stay cheap.
        max_batch_size=20,
        # The run's generated URLs name hosts no DNS knows: refused, every POST would be a
        # 422 and no endpoint ever created. Delivering is not part of the run (no worker).
        webhook_allow_private=True,
    )
    engine: Engine = demo_engine(own)
    try:
        job_ids = seed_jobs(engine)
        webhooks = seed_webhooks(engine, job_ids)
        with Session(engine) as session:
            headers = token_for(session, ADMIN.person_id)
            session.commit()
        argv = control_socket(stack_commands(own, names=("web",))["web"], workdir / "web.ctl")
        child = start_child("web", argv, child_env(own), workdir)
        try:
            url = f"http://127.0.0.1:{own.port}"
            wait_http(child, f"{url}/healthz")
            yield Web(url, headers, job_ids, webhooks)
        finally:
            child.stop()
    finally:
        engine.dispose()
        purge(own, own.queue)
        _drop(own)


def config(web: Web) -> str:
    """The run's schemathesis.toml."""
    dictionaries = KNOWN_IDS | {
        "jobs": web.job_ids,
        "ended_jobs": ended(web.job_ids),
        "webhooks": web.webhooks.kept,
        "doomed_webhooks": web.webhooks.doomed,
    }
    lines = [
        "[checks.negative_data_rejection]",
        f"expected-statuses = {json.dumps(NEGATIVE_STATUSES)}",
        # A warning (an operation that never got past 404, say) fails the run too.
        "[warnings]",
        "fail-on = true",
        "",
    ]
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    for operation_id, dictionary in AIMED.items():
        name = "job_id" if dictionary in JOB_DICTIONARIES else "id"
        lines += [
            "[[operations]]",
            f'include-operation-id = "{operation_id}"',
            f'parameters = {{ "path.{name}" = {{ dictionary = "{dictionary}", probability = 0.5 }} }}',
            "",
        ]
    return "\n".join(lines)


def st_env(web: Web) -> dict[str, str]:
    """Ours, without coverage's: schemathesis runs none of the code measured, and traced it
    runs far slower. The hooks learn which jobs ended."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")}
    return env | {
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "TIMEBATCH_ENDED_JOBS": ",".join(ended(web.job_ids)),
    }


class Summary:
    """The run's counts, printed with pytest's summary."""

    line = ""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.line:
            terminalreporter.write_line(self.line)


SUMMARY = Summary()


def test_schemathesis_finds_no_contradiction(
    web: Web, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    if not pytestconfig.pluginmanager.has_plugin("timebatch-outside"):
        pytestconfig.pluginmanager.register(SUMMARY, "timebatch-outside")
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(config(web))
    junit = tmp_path / "junit.xml"
    headers = [f"--header={name}: {value}" for name, value in web.headers.items()]
    st = Path(sys.executable).with_name("st")
    command = [
        str(st), "--config-file", str(config_file), "--no-color",
        "run", f"{web.url}/api/v2/openapi.json", "--url", web.url,
        *CHECKS, "--mode", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--generation-database", "none", *headers,
        "--report", "junit", "--report-junit-path", str(junit),
    ]  # fmt: skip
    started = time.monotonic()
    run = subprocess.run(
        command,
        env=st_env(web),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    seconds = time.monotonic() - started
    output = run.stdout + run.stderr
    assert junit.exists(), output[-5000:]
    suite = ET.parse(junit).getroot()
    failures = Counter(failure.get("message", "?") for failure in suite.iter("failure"))
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors")}
    cases = re.search(r"(\d+) generated", output)
    by_check = ", ".join(f"{code} x{n}" for code, n in sorted(failures.items()))
    SUMMARY.line = (
        f"schemathesis CLI: {cases[1] if cases else '?'} test cases, {counts['tests']}"
        f" operations and scenarios, {counts['failures']} failed"
        f"{f' ({by_check})' if by_check else ''}, {counts['errors']} errors, in {seconds:.0f} s"
    )
    assert counts["failures"] == counts["errors"] == 0, output[-20000:]
    assert run.returncode == 0, output[-5000:]
