#!/usr/bin/env python
"""Check the in-tree patch with PyTensor's own suites, in a PyTensor without the add-on.

1. Generates the patch (``scripts/upstream.py``) against the sdist of the
   installed pytensor (cached like ``scripts/pytensor_suites.py`` does).
2. Checks that it applies cleanly (``patch -p1 --dry-run``) to the oldest and the
   newest 3.3.x sdists on the package index, and (``git apply --check``) to the
   installed version's.
3. Applies it in a temporary copy of the tree and installs that copy, without
   this package, into a venv (``python -m venv``; ``pip install ./patched pytest
   hypothesis scipy``), cached under the patch's hash.
4. Runs there PyTensor's ``tests/test_gradient.py`` and ``tests/test_rop.py``
   and compares the failing test ids with those of the unpatched PyTensor (the
   installed one, same version), runs the patch's own tests under
   ``tests/xtensor/`` (all must pass).
5. Runs ``examples/demo.py`` and ``examples/budget_optimisation.py`` in both
   forms -- this interpreter with the repository first on ``PYTHONPATH`` (the
   add-on), and the venv with their ``import pytensor_lazy_pullback`` line
   removed (the patch): each must exit 0 and print the same in both, but for
   the lines :data:`FORM_SPECIFIC` names.
6. Runs ``scripts/compare_forms.py``'s probes (gradients, ``dprint`` of the lazy,
   expanded and compiled graphs, errors, README's code blocks) in both forms the
   same way, and compares them: any difference fails.

Usage::

    python scripts/upstream_check.py [--keep] [--linker py]

Cache: ``$PYTENSOR_SUITES_CACHE`` (default ``~/.cache/pytensor-lazy-pullback/sdists``):
sdists, unpacked trees, ``pip index versions`` (one day) and ``venvs/<hash>``.

Exit status: 0 all good; 1 a regression, a failing patch test, a failing
example, the two forms differing or a patch that does not apply; 2 the runner itself
failed; 3 something is not cached and the package index cannot be reached.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

import compare_forms  # noqa: E402
import pytensor_suites as suites  # noqa: E402
import upstream  # noqa: E402
from pytensor_suites import IndexUnreachable, RunnerError, log  # noqa: E402

SERIES = "3.3"
VENV_PACKAGES = ["pytest", "hypothesis", "scipy"]
KEEP_VENVS = 2
IN_USE_SECONDS = 3600  # a venv used this recently may be in use by another checker
EXIT_OK, EXIT_FAIL, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2, 3


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


def series_versions(cache: Path) -> list[str]:
    """The 3.3.x releases on the index (``pip index versions``), cached for a day."""
    cached = cache / f"pytensor-{SERIES}-versions.json"
    if cached.is_file() and time.time() - cached.stat().st_mtime < 86400:
        return json.loads(cached.read_text())
    proc = run([
        sys.executable, "-m", "pip", "index", "versions", "pytensor",
        "--retries", "2", "--timeout", "30",
    ])
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if cached.is_file():
            return json.loads(cached.read_text())
        if suites.UNREACHABLE_PATTERNS.search(output):
            raise IndexUnreachable(f"pip index versions pytensor: {output.strip()[-300:]}")
        raise RunnerError(f"pip index versions pytensor failed: {output.strip()[-300:]}")
    match = re.search(r"Available versions:\s*(.*)", output)
    if not match:
        raise RunnerError(f"cannot read pip index versions' output: {output.strip()[:300]}")
    versions = [
        v.strip() for v in match[1].split(",")
        if re.fullmatch(rf"{re.escape(SERIES)}\.\d+", v.strip())
    ]
    versions.sort(key=lambda v: int(v.rsplit(".", 1)[1]))
    if not versions:
        raise RunnerError(f"no pytensor {SERIES}.x release on the index")
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(versions))
    return versions


def check_applies(patch_file: Path, version: str, cache: Path) -> str | None:
    """``None`` if the patch applies cleanly to pytensor==version's sdist, else why not."""
    tree = suites.unpacked_sdist(suites.fetch_sdist(version, cache), cache)
    proc = run(["patch", "-p1", "--dry-run", "-f", "-s", "-i", str(patch_file)], cwd=tree)
    if proc.returncode != 0:
        return (proc.stdout + proc.stderr).strip().splitlines()[-1] if (
            proc.stdout + proc.stderr
        ).strip() else f"patch exited {proc.returncode}"
    text = (proc.stdout + proc.stderr).strip()
    if re.search(r"offset|fuzz", text, re.I):
        return f"applies only with offsets or fuzz: {text.splitlines()[0]}"
    return None


def patched_venv(patched: Path, key: str, cache: Path) -> tuple[Path, bool]:
    """A venv with the patched PyTensor installed (cached by `key`); and whether it was cached."""
    venvs = cache / "venvs"
    venv = venvs / key
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file() and python.is_file():
        os.utime(venv)
        return python, True
    shutil.rmtree(venv, ignore_errors=True)
    venvs.mkdir(parents=True, exist_ok=True)
    proc = run([sys.executable, "-m", "venv", str(venv)])
    if proc.returncode != 0:
        raise RunnerError(f"python -m venv failed: {proc.stderr.strip()[-500:]}")
    proc = run([
        str(python), "-m", "pip", "install", "--quiet", "--retries", "2", "--timeout", "60",
        str(patched), *VENV_PACKAGES,
    ])
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        shutil.rmtree(venv, ignore_errors=True)
        if suites.UNREACHABLE_PATTERNS.search(output):
            raise IndexUnreachable(f"pip install into the venv: {output.strip()[-300:]}")
        raise RunnerError(f"pip install of the patched tree failed:\n{output.strip()[-1500:]}")
    (venv / ".complete").write_text(key + "\n")
    # Keep the most recent venvs only; but not one used in the last hour: the cache
    # is shared by every worktree's checker, and another may be running in it.
    others = sorted(
        (p for p in venvs.iterdir() if p.is_dir() and p != venv),
        key=lambda p: p.stat().st_mtime, reverse=True,
    )
    for old in others[KEEP_VENVS - 1 :]:
        if time.time() - old.stat().st_mtime > IN_USE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    return python, False


def venv_facts(python: Path) -> dict:
    code = (
        "import importlib.util, json, pytensor, pytensor.gradient_lazy; "
        "print(json.dumps({'file': pytensor.__file__, 'version': pytensor.__version__, "
        "'addon': importlib.util.find_spec('pytensor_lazy_pullback') is not None}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = run([str(python), "-c", code], cwd=tempfile.gettempdir(), env=env)
    if proc.returncode != 0:
        raise RunnerError(f"the patched PyTensor does not import:\n{proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


EXAMPLES = ("demo.py", "budget_optimisation.py")
"""examples/ run in both forms (pymc_dims_nuts.py needs PyMC, which the venv lacks)."""

FORM_SPECIFIC = {
    # The demo's contrast with PyTensor alone: the add-on switches itself off,
    # the patched PyTensor has nothing to switch off.
    "demo.py": re.compile(r"(?m)^  PyTensor (alone|with the in-tree patch): .*\n"),
}
"""Lines an example prints differently in the two forms on purpose."""


def run_example(name: str, workdir: Path, python: Path | None = None) -> tuple[bool, str, str]:
    """(exit 0?, stdout, stderr) of ``examples/NAME``.

    With `python` (the venv): a copy without its ``import pytensor_lazy_pullback``
    line, no ``PYTHONPATH``.  Without: the add-on form, this interpreter with the
    repository first on ``PYTHONPATH``.
    """
    script = REPO / "examples" / name
    if python is None:
        cmd = [sys.executable, str(script)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        ))
    else:
        stripped, n = re.subn(r"(?m)^import pytensor_lazy_pullback.*\n", "", script.read_text())
        if n != 1:
            raise RunnerError(f"examples/{name} has no single 'import pytensor_lazy_pullback' line")
        copy = workdir / name
        copy.write_text(stripped)
        cmd = [str(python), str(copy)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = run(cmd, cwd=workdir, env=env, timeout=900)
    return proc.returncode == 0, proc.stdout, proc.stderr


def run_examples(python: Path, workdir: Path) -> tuple[list[str], list[str]]:
    """Each of `EXAMPLES` in both forms, outputs compared: (lines to print, failures)."""
    lines: list[str] = []
    failures: list[str] = []
    for name in EXAMPLES:
        t0 = time.monotonic()
        outputs = {}
        for form, py in (("add-on", None), ("patched", python)):
            ok, stdout, stderr = run_example(name, workdir, py)
            if ok:
                pattern = FORM_SPECIFIC.get(name)
                outputs[form] = pattern.sub("", stdout) if pattern else stdout
            else:
                where = "on the patched PyTensor" if py else "with the add-on"
                failures.append(f"examples/{name} fails {where}")
                lines += [f"examples/{name} FAILED {where}:", (stdout + stderr)[-3000:]]
        if len(outputs) < 2:
            continue
        found = compare_forms.first_difference(outputs["add-on"], outputs["patched"])
        if found is None:
            lines.append(
                f"examples/{name}: exit 0 in both forms, same output "
                f"({len(outputs['patched'].splitlines())} lines; {time.monotonic() - t0:.0f} s)"
            )
        else:
            line, addon, patched = found
            failures.append(f"examples/{name} prints differently in the two forms (line {line})")
            lines += [
                f"examples/{name}: output line {line} differs:",
                f"    add-on:  {addon}",
                f"    patched: {patched}",
            ]
    return lines, failures


def run_forms(python: Path, workdir: Path) -> dict:
    """``compare_forms.py`` in the add-on form and in the patched venv, side by side.

    Returns ``{"results": {form: results or None}, "errors": {form: output}}``:
    a form whose run failed has no results and its output under ``errors``.
    """
    script = str(SCRIPTS / "compare_forms.py")
    addon_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    ))
    patched_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs = {
        "addon": [sys.executable, script, "--form", "addon"],
        "patched": [str(python), script, "--form", "patched"],
    }
    envs = {"addon": addon_env, "patched": patched_env}
    results: dict = {}
    errors: dict = {}
    # One after the other: on the 2-core machine, running them together saved nothing.
    for form, cmd in runs.items():
        out = workdir / f"forms-{form}.json"
        proc = run([*cmd, "--out", str(out)], cwd=workdir, env=envs[form], timeout=900)
        if proc.returncode != 0 or not out.is_file():
            errors[form] = (proc.stdout + proc.stderr).strip()[-3000:]
            results[form] = None
        else:
            results[form] = json.loads(out.read_text())
    return {"results": results, "errors": errors}


def judge_forms(forms: dict) -> tuple[list[str], list[str]]:
    """(lines to print, failures) for the results of `run_forms`."""
    lines: list[str] = []
    failures: list[str] = []
    for form, output in forms["errors"].items():
        failures.append(f"forms: compare_forms.py --form {form} failed")
        lines += [f"compare_forms.py --form {form} failed:", *output.splitlines()[-20:]]
    addon, patched = forms["results"]["addon"], forms["results"]["patched"]
    if addon is None or patched is None:
        return lines, failures
    lines += [
        f"note: versions differ: {v}" for v in compare_forms.version_mismatches(addon, patched)
    ]
    diffs = compare_forms.compare(addon, patched)
    for diff in diffs:
        lines.append(str(diff))
        failures.append(f"forms differ: {diff.probe} ({diff.field}, line {diff.line})")
    for form, results in (("add-on", addon), ("patched", patched)):
        for problem in compare_forms.unexpected(results):
            lines.append(f"unexpected in the {form} form: {problem}")
            failures.append(f"forms: unexpected in the {form} form: {problem}")
    forms["summary"] = f"{compare_forms.summary(addon, patched, diffs)} ({forms['seconds']:.0f} s)"
    lines.append(forms["summary"])
    return lines, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--linker", default="py",
        help="pytensor linker for PyTensor's suites (default: %(default)s, as "
        "scripts/pytensor_suites.py); the patch's own tests run with PyTensor's defaults",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    cache = suites.cache_dir()
    version = importlib.metadata.version("pytensor")
    log(f"pytensor {version} ({sys.executable}); cache {cache}")
    workdir = Path(tempfile.mkdtemp(prefix="upstream-check-"))
    failures: list[str] = []
    try:
        tree = suites.unpacked_sdist(suites.fetch_sdist(version, cache), cache)
        try:
            patch, size = upstream.build_patch(tree)
        except upstream.AnchorError as exc:
            raise RunnerError(f"upstream: {exc}") from exc
        patch_file = workdir / "lazy_pullback.patch"
        patch_file.write_text(patch)
        key = f"pytensor-{version}-{hashlib.sha256(patch.encode()).hexdigest()[:16]}"
        log(f"patch: {upstream.describe(size)} ({key})")

        # Applies cleanly: git apply on the installed version, patch -p1 on the series' ends.
        proc = run(["git", "apply", "--check", "-p1", str(patch_file)], cwd=tree)
        if proc.returncode != 0:
            failures.append(f"git apply --check on {version}: {proc.stderr.strip()[-300:]}")
        versions = series_versions(cache)
        ends = list(dict.fromkeys([versions[0], versions[-1]]))
        for v in ends:
            problem = check_applies(patch_file, v, cache)
            log(f"patch -p1 --dry-run on pytensor {v}: {'clean' if problem is None else problem}")
            if problem is not None:
                failures.append(f"does not apply cleanly to pytensor {v}: {problem}")

        patched = workdir / "patched"
        shutil.copytree(tree, patched, symlinks=True)
        proc = run(["patch", "-p1", "-s", "-i", str(patch_file)], cwd=patched)
        if proc.returncode != 0:
            raise RunnerError(f"the patch does not apply to {version}: {proc.stdout}{proc.stderr}")

        t0 = time.monotonic()
        python, cached = patched_venv(patched, key, cache)
        facts = venv_facts(python)
        log(
            f"venv: {python.parent.parent} ({'cached' if cached else 'built'} in "
            f"{time.monotonic() - t0:.0f} s); pytensor {facts['version']} from {facts['file']}"
        )
        if facts["addon"]:
            raise RunnerError("pytensor_lazy_pullback is importable in the patched venv")
        if facts["version"] != version:
            raise RunnerError(f"the venv has pytensor {facts['version']}, expected {version}")

        # PyTensor's suites: unpatched (installed PyTensor, same version) vs patched.
        suites.extract_suites(suites.fetch_sdist(version, cache), workdir)
        suites.install_support(workdir)
        suites.check_helpers(workdir)
        plain = suites.run_suites(workdir, "plain", [], args.linker)
        on_patched = suites.run_suites(workdir, "patched", [], args.linker, python=str(python))
        regressions, missing, tolerated, fixed, _ = suites.compare(
            plain["outcomes"], on_patched["outcomes"]
        )
        # The patch's own tests, with PyTensor's default configuration.
        own_dir = workdir / "own"
        shutil.copytree(patched / upstream.TEST_DIR, own_dir / upstream.TEST_DIR)
        shutil.copyfile(suites.SUPPORT / "suite_pytest.ini", own_dir / "pytest.ini")
        own = suites.run_suites(
            own_dir, "patched", [], "default", python=str(python),
            suites=(upstream.TEST_DIR,), conftest=False,
        )
        own_failing = sorted(t for t, o in own["outcomes"].items() if o in suites.FAILING)

        log("\n=== examples (patched: without their import of the add-on; and the add-on) ===")
        examples_lines, examples_failures = run_examples(python, workdir)
        for line in examples_lines:
            log(line)
        failures.extend(examples_failures)

        log("\n=== forms (scripts/compare_forms.py: the add-on vs the patched PyTensor) ===")
        t0 = time.monotonic()
        forms = run_forms(python, workdir)
        forms["seconds"] = time.monotonic() - t0
        forms_lines, forms_failures = judge_forms(forms)
        for line in forms_lines:
            log(line)
        failures.extend(forms_failures)
    except IndexUnreachable as exc:
        log(f"SKIP: {exc}")
        return EXIT_UNREACHABLE
    except RunnerError as exc:
        log(f"ERROR: {exc}")
        return EXIT_ERROR
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    log("\n=== Summary ===")
    log(f"PyTensor suites, unpatched: {suites.counts_line(plain['outcomes'])} ({plain['seconds']:.0f} s)")
    log(f"PyTensor suites, patched:   {suites.counts_line(on_patched['outcomes'])} ({on_patched['seconds']:.0f} s)")
    log(f"patch's own tests, patched: {suites.counts_line(own['outcomes'])} ({own['seconds']:.0f} s)")
    for t in tolerated:
        log(f"  failing on both trees (tolerated): {t}")
    for t in fixed:
        log(f"  failing on the unpatched tree only: {t}")
    for t in regressions:
        failures.append(f"regression: {t} ({plain['outcomes'].get(t, 'absent')} -> {on_patched['outcomes'][t]})")
        for line in on_patched["messages"].get(t, "").splitlines():
            log(f"      | {line[:200]}")
    for t in missing:
        failures.append(f"not run on the patched tree: {t}")
    for t in own_failing:
        failures.append(f"patch test fails: {t}")
        for line in own["messages"].get(t, "").splitlines():
            log(f"      | {line[:200]}")
    log(forms.get("summary", "forms: not compared (a form's run failed)"))
    for failure in failures:
        log(f"FAIL: {failure}")
    if not failures:
        log("upstream patch OK: applies cleanly, no regression in PyTensor's suites, "
            "its own tests pass, the examples run, the two forms agree")
    log(f"total time {time.monotonic() - start:.1f} s")
    return EXIT_FAIL if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
