"""Run libiscsi's iscsi-test-cu and parse its per-test verdicts.

CUnit 2.1 has no "skipped" state: libiscsi prints ``[SKIPPED] reason`` inside a test that then
passes. We parse the normal (verbose) text output, so a skip is reported as a skip, never as a
pass, and the caller decides which skips are documented (README) and which fail the run.
Lines starting ``[FAILED]`` inside a test are libiscsi's log of an expected failure and do not
decide anything: the verdict is the word (``passed``/``FAILED``) that closes the test.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

_SUITE = re.compile(r"^Suite: (\S+)")
_TEST = re.compile(r"^\s+Test: (\S+) \.\.\.")
_SKIP = re.compile(r"\[SKIPPED\]\s*(.*)")
# The verdict starts a line of its own (log lines of the next test may follow on it).
_VERDICT = re.compile(r"^(passed|FAILED)\b")


@dataclass
class TestResult:
    name: str  # Suite.Test
    verdict: str  # "passed", "failed", "skipped"
    detail: str = ""


@dataclass
class Run:
    results: list[TestResult] = field(default_factory=list)
    output: str = ""
    returncode: int = 0

    def by(self, verdict: str) -> list[TestResult]:
        return [r for r in self.results if r.verdict == verdict]

    def summary(self) -> str:
        return (f"{len(self.by('passed'))} passed, {len(self.by('failed'))} failed, "
                f"{len(self.by('skipped'))} skipped of {len(self.results)}")


def parse(output: str) -> list[TestResult]:
    results: list[TestResult] = []
    suite = "?"
    current: TestResult | None = None
    lines: list[str] = []

    def close(verdict: str) -> None:
        nonlocal current, lines
        if current is None:
            return
        text = "\n".join(lines)
        skips = _SKIP.findall(text)
        if verdict == "passed" and skips:
            current.verdict, current.detail = "skipped", skips[0].strip()
        else:
            current.verdict = verdict
            if verdict == "failed":
                current.detail = "\n".join(x.strip() for x in lines if x.strip())[-2000:]
        results.append(current)
        current, lines = None, []

    for raw in output.splitlines():
        m = _SUITE.match(raw)
        if m:
            close("failed") if current else None
            suite = m.group(1)
            continue
        m = _TEST.match(raw)
        if m:
            if current is not None:
                close("failed")
            current = TestResult(f"{suite}.{m.group(1)}", "?")
            lines = [raw[m.end():]]
            verdict = _VERDICT.match(raw[m.end():])
            if verdict:
                close("passed" if verdict.group(1) == "passed" else "failed")
            continue
        if current is None:
            continue
        verdict = _VERDICT.match(raw)
        if verdict:
            close("passed" if verdict.group(1) == "passed" else "failed")
        else:
            lines.append(raw)
    if current is not None:
        close("failed")  # the tool died inside a test
    return results


def run(url: str, test: str = "ALL", *, url2: str | None = None, dataloss: bool = True,
        timeout: float = 1800, cwd: str | None = None, extra: list[str] | None = None) -> Run:
    cmd = ["iscsi-test-cu", "-t", test, *(extra or [])]
    if dataloss:
        cmd.append("-d")
    cmd.append(url)
    if url2:
        cmd.append(url2)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    out = proc.stdout + proc.stderr
    return Run(parse(out), out, proc.returncode)
