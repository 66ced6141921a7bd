#!/usr/bin/env python
"""Run PyTensor's own gradient test suites with and without the add-on.

No regression in PyTensor itself: this script takes the sdist of the installed
pytensor version from the package index (cached), extracts only
``tests/test_gradient.py`` and ``tests/test_rop.py`` into a temporary directory,
adds the helper modules they import that the sdist does not ship (our own, from
``scripts/pytensor_suite_support/``), and runs pytest on them twice: without the
add-on, then with ``pytensor_lazy_pullback`` imported (from this repository).

It prints the outcome counts of both runs and the tests that fail with the add-on
but not without it, and exits non-zero iff there is any such test.  Failures that
also occur without the add-on are listed but tolerated.

Usage::

    python scripts/pytensor_suites.py [--cache-dir DIR] [--keep] [-- PYTEST_ARGS...]

The sdist is cached in ``$PYTENSOR_SUITES_CACHE`` (default
``~/.cache/pytensor-lazy-pullback/sdists``); with the file there, nothing is
downloaded and the script works offline.

Exit status: 0 no regression; 1 regressions; 2 the runner itself failed (e.g. the
add-on was not active, pytest could not run, the sdist lacks the files);
3 the sdist is not cached and the package index cannot be reached.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUPPORT = Path(__file__).resolve().parent / "pytensor_suite_support"
SUITES = ("tests/test_gradient.py", "tests/test_rop.py")
# support file -> where it goes in the temporary directory
SUPPORT_FILES = {
    "tests/__init__.py": "tests/__init__.py",
    "tests/unittest_tools.py": "tests/unittest_tools.py",
    "suite_conftest.py": "conftest.py",
    "suite_pytest.ini": "pytest.ini",
}
DEFAULT_CACHE = Path.home() / ".cache" / "pytensor-lazy-pullback" / "sdists"

EXIT_OK, EXIT_REGRESSION, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2, 3
FAILING = {"failed", "error"}
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed")

# pip's messages when it cannot reach the index at all.
UNREACHABLE_PATTERNS = re.compile(
    r"NewConnectionError|NameResolutionError|Failed to resolve|"
    r"Failed to establish a new connection|"
    r"Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|No route to host|Connection refused|"
    r"ConnectTimeout|Read timed out|ProxyError|Max retries exceeded|"
    r"Could not fetch URL"
)


class RunnerError(Exception):
    """The runner itself failed (exit status 2)."""


class IndexUnreachable(Exception):
    """The sdist is not cached and the index cannot be reached (exit status 3)."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- sdist


def cached_sdist(cache: Path, version: str) -> Path | None:
    for candidate in (cache / f"pytensor-{version}.tar.gz",):
        if candidate.is_file() and tarfile.is_tarfile(candidate):
            return candidate
    return None


def fetch_sdist(version: str, cache: Path) -> Path:
    """The sdist of pytensor==version: from the cache, else downloaded into it."""
    found = cached_sdist(cache, version)
    if found is not None:
        log(f"sdist: {found} (cached)")
        return found
    cache.mkdir(parents=True, exist_ok=True)
    # Download next to the cache and move into place only when complete, so an
    # interrupted download never leaves a broken file in the cache.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        # `--no-binary pytensor` (not `:all:`): pip prepares the sdist's
        # metadata, which installs its build dependencies; with `:all:` those
        # (numpy...) would be built from source too, which takes minutes and fails.
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps",
            "--no-binary", "pytensor", "--retries", "2", "--timeout", "30",
            f"pytensor=={version}", "-d", tmp,
        ]
        log(f"sdist: downloading ({' '.join(cmd[1:])})")
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            if UNREACHABLE_PATTERNS.search(output):
                raise IndexUnreachable(
                    f"pytensor=={version} sdist is not cached in {cache} and the "
                    f"package index cannot be reached:\n{tail}"
                )
            raise RunnerError(f"pip download failed (exit {proc.returncode}):\n{tail}")
        downloaded = list(Path(tmp).glob("pytensor-*.tar.gz"))
        if len(downloaded) != 1:
            raise RunnerError(
                f"pip download produced {[p.name for p in Path(tmp).iterdir()]}, "
                "expected one pytensor-*.tar.gz"
            )
        target = cache / f"pytensor-{version}.tar.gz"
        os.replace(downloaded[0], target)
    log(f"sdist: {target} (downloaded in {time.monotonic() - start:.0f} s)")
    return target


def cache_dir() -> Path:
    """``$PYTENSOR_SUITES_CACHE``, else the default cache of sdists."""
    env = os.environ.get("PYTENSOR_SUITES_CACHE")
    return Path(env) if env else DEFAULT_CACHE


def unpacked_sdist(sdist: Path, cache: Path) -> Path:
    """The whole sdist unpacked (``cache/trees/pytensor-X.Y.Z``), unpacked once and kept."""
    name = sdist.name.removesuffix(".tar.gz")
    target = cache / "trees" / name
    if (target / "pytensor" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = Path(tmp) / name
        if not (unpacked / "pytensor" / "__init__.py").is_file():
            raise RunnerError(f"{sdist.name} does not unpack to {name}/pytensor/")
        os.replace(unpacked, target)
    return target


def extract_suites(sdist: Path, dest: Path) -> None:
    """Extract only the two test files (as dest/tests/NAME), nothing else."""
    with tarfile.open(sdist) as tar:
        members = {}
        for member in tar.getmembers():
            parts = member.name.split("/")
            # "pytensor-X.Y.Z/tests/test_gradient.py"
            if member.isfile() and len(parts) == 3 and "/".join(parts[1:]) in SUITES:
                members["/".join(parts[1:])] = member
        missing = [s for s in SUITES if s not in members]
        if missing:
            raise RunnerError(f"{sdist.name} does not contain {missing}")
        for suite, member in members.items():
            target = dest / suite
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


def install_support(dest: Path) -> None:
    for source, target in SUPPORT_FILES.items():
        (dest / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SUPPORT / source, dest / target)


def check_helpers(dest: Path) -> None:
    """Fail clearly if the suites use a ``tests.*`` module or name we do not provide."""
    provided_modules = {"tests", "tests.unittest_tools"}
    utt_tree = ast.parse((SUPPORT / "tests/unittest_tools.py").read_text())
    provided_names = {
        node.name
        for node in utt_tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    } | {
        target.id
        for node in utt_tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    problems = []
    for suite in SUITES:
        tree = ast.parse((dest / suite).read_text())
        aliases = set()  # local names bound to tests.unittest_tools
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "tests" or node.module.startswith("tests.")
            ):
                for alias in node.names:
                    if node.module == "tests":
                        module = f"tests.{alias.name}"
                        if module not in provided_modules:
                            problems.append(f"{suite} imports {module}")
                        elif module == "tests.unittest_tools":
                            aliases.add(alias.asname or alias.name)
                    elif node.module not in provided_modules:
                        problems.append(f"{suite} imports {node.module}")
                    elif node.module == "tests.unittest_tools":
                        if alias.name not in provided_names:
                            problems.append(f"{suite} uses unittest_tools.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "tests" and alias.name not in provided_modules:
                        problems.append(f"{suite} imports {alias.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr not in provided_names
            ):
                problems.append(f"{suite} uses unittest_tools.{node.attr}")
    if problems:
        raise RunnerError(
            "the sdist's suites need helpers that scripts/pytensor_suite_support/ "
            "does not provide (add them there): " + "; ".join(sorted(set(problems)))
        )


# --------------------------------------------------------------------------- runs


LABELS = {
    "plain": "without the add-on",
    "addon": "with the add-on",
    "patched": "on the patched PyTensor",
}


def run_suites(
    workdir: Path,
    mode: str,
    extra_args: list[str],
    linker: str,
    python: str = sys.executable,
    suites: tuple[str, ...] = SUITES,
    conftest: bool = True,
) -> dict:
    """Run pytest on the suites in `mode` (see `LABELS`) with `python`; per-test outcomes.

    Without `conftest` (the patch's own tests, whose directory has none) no
    evidence is written or checked.
    """
    tag = mode if conftest else f"{mode}-own"
    junit = workdir / f"junit-{tag}.xml"
    evidence_file = workdir / f"evidence-{tag}.json"
    for stale in (junit, evidence_file):
        stale.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(
        PYTENSOR_SUITES_MODE=mode,
        PYTENSOR_SUITES_REPO=str(REPO),
        PYTENSOR_SUITES_EVIDENCE=str(evidence_file),
    )
    if linker != "default":
        # Before the caller's flags, which thus still win.
        env["PYTENSOR_FLAGS"] = ",".join(
            f for f in (f"linker={linker}", env.get("PYTENSOR_FLAGS")) if f
        )
    if mode == "addon":
        # This repository's package, whatever else is installed.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH")) if p
        )
    elif mode == "patched":
        env.pop("PYTHONPATH", None)  # the venv's PyTensor, nothing else
    cmd = [
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-rfE", "-c", str(workdir / "pytest.ini"), "--rootdir", str(workdir),
        f"--junitxml={junit}", *extra_args, *suites,
    ]
    label = LABELS[mode] if conftest else f"{LABELS[mode]} (the patch's own tests)"
    log(f"\n=== {'PyTensor suites' if conftest else 'tests'} {label} ===")
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    output = (proc.stdout + proc.stderr).rstrip()
    (workdir / f"pytest-{tag}.log").write_text(output + "\n")
    lines = output.splitlines()
    if proc.returncode not in (0, 1):  # 1: some tests failed; anything else: broken run
        log("\n".join(lines[-60:]))
        raise RunnerError(f"pytest {label} exited with status {proc.returncode}")
    # pytest's short summary (FAILED/ERROR lines) and closing line; the whole
    # output (warnings, tracebacks) is in pytest-MODE.log (see --keep).
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            log(line)
    log(lines[-1] if lines else "(no output)")
    if not junit.is_file():
        raise RunnerError(f"pytest {label} wrote no junit XML")
    if not conftest:
        outcomes, times, messages = parse_junit(junit)
        if not outcomes:
            raise RunnerError(f"pytest {label} ran no test")
        return {
            "outcomes": outcomes, "times": times, "messages": messages,
            "seconds": seconds, "evidence": {},
        }
    if not evidence_file.is_file():
        raise RunnerError(f"the conftest {label} wrote no evidence (was it loaded?)")
    evidence = json.loads(evidence_file.read_text())
    check_evidence(mode, evidence)
    outcomes, times, messages = parse_junit(junit)
    if not outcomes:
        raise RunnerError(f"pytest {label} ran no test")
    return {
        "outcomes": outcomes, "times": times, "messages": messages,
        "seconds": seconds, "evidence": evidence,
    }


def check_evidence(mode: str, evidence: dict) -> None:
    problems = list(evidence.get("problems", []))
    if evidence.get("mode") != mode:
        problems.append(f"conftest ran in mode {evidence.get('mode')!r}, expected {mode!r}")
    if mode == "addon":
        if not (evidence.get("enabled_at_start") and evidence.get("enabled_at_end")):
            problems.append("the add-on was not enabled for the whole run")
    elif evidence.get("imported_at_end"):
        problems.append("the add-on was imported in the run without it")
    if mode == "patched" and not evidence.get("in_tree"):
        problems.append("the run's PyTensor is not the patched one")
    if not evidence.get("hook_calls"):
        problems.append("pytensor.gradient._populate_grad_dict was never called")
    if problems:
        raise RunnerError(f"run {mode}: " + "; ".join(problems))


def parse_junit(path: Path) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """Per-test outcome (one of OUTCOMES), duration and failure text, from a junit XML."""
    outcomes: dict[str, str] = {}
    times: dict[str, float] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        test_id = f"{classname}::{name}" if classname else name
        kinds = {child.tag: child for child in case}
        if "error" in kinds:
            outcome = "error"
        elif "failure" in kinds:
            outcome = "failed"
        elif "skipped" in kinds:
            outcome = "xfailed" if kinds["skipped"].get("type") == "pytest.xfail" else "skipped"
        else:
            outcome = "passed"
        for tag in ("error", "failure"):
            if tag in kinds:
                text = (kinds[tag].text or kinds[tag].get("message") or "").strip()
                messages[test_id] = "\n".join(text.splitlines()[-12:])
        # A test can appear twice (e.g. passed, then an error at teardown): keep the worst.
        previous = outcomes.get(test_id)
        if previous is None or (outcome in FAILING and previous not in FAILING):
            outcomes[test_id] = outcome
        times[test_id] = times.get(test_id, 0.0) + float(case.get("time", 0) or 0)
    return outcomes, times, messages


def counts_line(outcomes: dict[str, str]) -> str:
    # Deliberately not "N passed, N failed": that form is read as a test runner's
    # closing line, and failures here can be tolerated ones.
    counts = Counter(outcomes.values())
    return " ".join(f"{key}={counts.get(key, 0)}" for key in OUTCOMES) + f" total={len(outcomes)}"


def compare(plain: dict[str, str], addon: dict[str, str]):
    regressions = sorted(
        t for t, o in addon.items() if o in FAILING and plain.get(t) not in FAILING
    )
    missing = sorted(t for t in plain if t not in addon)
    tolerated = sorted(t for t, o in addon.items() if o in FAILING and plain.get(t) in FAILING)
    fixed = sorted(t for t, o in plain.items() if o in FAILING and addon.get(t) not in FAILING)
    changed = sorted(
        t for t, o in addon.items()
        if t in plain and o != plain[t] and o not in FAILING and plain[t] not in FAILING
    )
    return regressions, missing, tolerated, fixed, changed


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir", type=Path,
        default=cache_dir(),
        help="where the sdist is cached (default: $PYTENSOR_SUITES_CACHE or %(default)s)",
    )
    parser.add_argument(
        "--linker", default="py",
        help="pytensor linker for both runs (default: %(default)s; 'default' keeps "
        "PyTensor's, numba, whose first, uncached compilations take ~10 minutes here); "
        "$PYTENSOR_FLAGS still overrides it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    total_start = time.monotonic()
    version = importlib.metadata.version("pytensor")
    log(f"pytensor {version} ({sys.executable}); add-on from {REPO}")
    if args.linker != "default":
        log(f"linker: {args.linker} (PyTensor's default, numba, compiles slowly when uncached)")
    try:
        sdist = fetch_sdist(version, args.cache_dir)
    except IndexUnreachable as exc:
        log(f"SKIP: {exc}")
        return EXIT_UNREACHABLE
    except RunnerError as exc:
        log(f"ERROR: {exc}")
        return EXIT_ERROR

    workdir = Path(tempfile.mkdtemp(prefix="pytensor-suites-"))
    try:
        extract_suites(sdist, workdir)
        install_support(workdir)
        check_helpers(workdir)
        log(f"suites: {', '.join(SUITES)} extracted into {workdir}")
        plain = run_suites(workdir, "plain", args.pytest_args, args.linker)
        addon = run_suites(workdir, "addon", args.pytest_args, args.linker)
    except RunnerError as exc:
        log(f"ERROR: {exc}")
        return EXIT_ERROR
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    regressions, missing, tolerated, fixed, changed = compare(plain["outcomes"], addon["outcomes"])
    log("\n=== Summary ===")
    for label, run in (("without add-on", plain), ("with add-on   ", addon)):
        log(
            f"{label}: {counts_line(run['outcomes'])} "
            f"({run['seconds']:.1f} s, grad hook calls={run['evidence']['hook_calls']})"
        )
    log(
        f"add-on active in the second run: {addon['evidence']['addon_file']} "
        f"(linker {addon['evidence']['linker']})"
    )
    slowest = sorted(addon["times"].items(), key=lambda item: -item[1])[:5]
    log("slowest tests with the add-on: " + ", ".join(f"{t} {s:.1f}s" for t, s in slowest))
    for title, tests in (
        ("failing without and with the add-on (tolerated)", tolerated),
        ("failing without the add-on only", fixed),
        ("other outcome changes (not failures)", changed),
    ):
        if tests:
            log(f"{title}:")
            for t in tests:
                log(f"  {t}: {plain['outcomes'].get(t)} -> {addon['outcomes'].get(t)}")
    bad = regressions + missing
    if bad:
        log("REGRESSIONS (fail with the add-on but not without it):")
        for t in regressions:
            log(f"  {t}: {plain['outcomes'].get(t, 'absent')} -> {addon['outcomes'][t]}")
            for line in addon["messages"].get(t, "").splitlines():
                log(f"      | {line[:200]}")
        for t in missing:
            log(f"  {t}: {plain['outcomes'][t]} -> not run with the add-on")
    else:
        log("no regression: no test fails with the add-on that passes without it")
    log(f"total time {time.monotonic() - total_start:.1f} s")
    return EXIT_REGRESSION if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
