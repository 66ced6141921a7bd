"""The in-tree form: the generated PyTensor patch passes PyTensor's own suites, alone.

Runs ``scripts/upstream_check.py``: generates the patch against the sdist of the
installed pytensor (cached in ``$PYTENSOR_SUITES_CACHE`` or
``~/.cache/pytensor-lazy-pullback/sdists``), checks that it applies cleanly to the
oldest and newest 3.3.x sdists, installs the patched PyTensor **without** this
package into a venv (cached by the patch's hash), and runs there PyTensor's
``tests/test_gradient.py`` and ``tests/test_rop.py`` (no new failure compared
with the unpatched PyTensor), the patch's own tests (all pass) and the demo,
and compares the two forms with ``scripts/compare_forms.py`` (gradients,
``dprint`` of lazy, expanded and compiled graphs, errors and README's examples,
identical).  Deselect with ``-m "not upstream_patch"``.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import compare_forms  # noqa: E402
from test_pytensor_suites import run_checker  # noqa: E402


@pytest.mark.upstream_patch
def test_upstream_patch_passes_pytensors_suites_without_the_addon():
    stdout = run_checker("upstream_check.py", timeout=2400)
    assert "upstream patch OK" in stdout
    forms = re.findall(r"^forms: (\d+) probes, (.*?) \(", stdout, flags=re.M)
    assert forms, "scripts/upstream_check.py printed no 'forms: N probes, ...' line"
    count, verdict = forms[-1]
    assert verdict == "identical" and int(count) >= 20, forms[-1]


def _results(**probes):
    return {"form": "x", "versions": {}, "probes": probes, "seconds": {}}


def test_compare_forms_names_the_probe_and_the_first_differing_line():
    addon = _results(p={"graph": "A [id A]\n B [id B]\n C [id C]", "log": ""})
    patched = _results(p={"graph": "A [id A]\n B [id B]\n D [id C]", "log": ""})
    [diff] = compare_forms.compare(addon, patched)
    assert (diff.probe, diff.field, diff.line) == ("p", "graph", 3)
    assert diff.addon == " C [id C]" and diff.patched == " D [id C]"
    assert compare_forms.summary(addon, patched, [diff]) == "forms: 1 probes, 1 differ"


def test_compare_forms_reads_the_addons_names_as_their_in_tree_homes():
    """The patch rewrites ``pytensor_lazy_pullback.X`` to X's home: not a difference."""
    addon = _results(p={
        "error": "type: pytensor_lazy_pullback.rewriting.LazyPullbackExpansionError\n"
                 "at 0x7f00aa12",
    })
    patched = _results(p={
        "error": "type: pytensor.tensor.rewriting.lazy_pullback.LazyPullbackExpansionError\n"
                 "at 0x7f99bb34",
    })
    assert compare_forms.compare(addon, patched) == []
    # A bare mention of the add-on is a difference.
    addon["probes"]["p"]["error"] = "import pytensor_lazy_pullback first"
    patched["probes"]["p"]["error"] = "import  first"
    assert len(compare_forms.compare(addon, patched)) == 1


def test_compare_forms_flags_missing_probes_fields_and_unexpected_outcomes():
    addon = _results(p={"graph": "x", "extra": "y"}, q={"graph": "z"})
    patched = _results(p={"graph": "x"})
    diffs = compare_forms.compare(addon, patched)
    assert [(d.probe, d.field) for d in diffs] == [("p", "extra"), ("q", "(probe)")]
    results = _results(error_a={"graph": "g"}, b={"error[numba]": "stage: compile\nmessage:\nboom"})
    assert compare_forms.unexpected(results) == [
        "error_a: raised nothing", "b: error[numba]: boom"
    ]


def test_readme_blocks_run_without_the_addon_import_in_the_patched_form():
    text = (
        "Usage\n-----\n\n.. code-block:: python\n\n    import pytensor\n\n"
        "    import pytensor_lazy_pullback  # once\n    x = 1\n\nAfter.\n\n"
        ".. code-block:: console\n\n    ./run.sh demo\n"
    )
    [block] = compare_forms.readme_blocks(text)
    assert block == "import pytensor\n\nimport pytensor_lazy_pullback  # once\nx = 1\n"
    assert compare_forms.for_form(block, "patched") == "import pytensor\n\nx = 1\n"
    assert compare_forms.for_form(block, "addon") == block
    assert len(compare_forms.readme_blocks()) >= 1  # README.rst's own


def run_generator(src, out):
    """``scripts/upstream.py SRC OUT``, its output captured."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "upstream.py"), str(src), str(out)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def test_generator_refuses_a_tree_that_is_not_pytensor(tmp_path):
    out = tmp_path / "out.patch"
    proc = run_generator(tmp_path, out)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a PyTensor source tree" in proc.stderr
    assert not out.exists()


def test_generator_names_a_changed_anchor_and_writes_nothing(tmp_path):
    """A PyTensor tree whose hooked function changed shape: one line, nothing written."""
    gradient = tmp_path / "pytensor" / "gradient.py"
    gradient.parent.mkdir()
    (tmp_path / "pytensor" / "__init__.py").write_text("")
    gradient.write_text("def _populate_grad_dict(graph, wrt):\n    pass\n")
    (tmp_path / "pytensor" / "tensor").mkdir()
    (tmp_path / "pytensor" / "tensor" / "__init__.py").write_text(
        "from pytensor.gradient import grad, hessian, jacobian\n"
    )
    out = tmp_path / "out.patch"
    before = gradient.read_text()
    proc = run_generator(tmp_path, out)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "pytensor/gradient.py" in line and "_populate_grad_dict" in line
    assert not out.exists()
    assert gradient.read_text() == before


def test_every_test_file_is_carried_or_left_out_with_a_reason():
    import upstream
    files = {path.name for path in Path(__file__).parent.glob("test_*.py")}
    carried = set(upstream.TESTS) | set(upstream.APPENDED_TESTS)
    left_out = set(upstream.LEFT_OUT_TESTS)
    assert not carried & left_out
    assert not set(upstream.TESTS) & set(upstream.APPENDED_TESTS)
    assert files == carried | left_out, (
        f"not in scripts/upstream.py TESTS, APPENDED_TESTS nor LEFT_OUT_TESTS: {sorted(files - carried - left_out)}; "
        f"named there but missing: {sorted((carried | left_out) - files)}"
    )
