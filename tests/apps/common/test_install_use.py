"""What a user of the installed package meets: --generate's data folder, the program name of the console
scripts, plain --help descriptions, and the code's provenance in config.json (version; git only for the
toolkit's own checkout)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apps.common.main import prepare_data_folder
from apps.link_scheduling import experiment as link_scheduling
from core import __version__, runs
from datasets.cli import plain_docstring, program_name

TINY_GRAPHS = ["--vertices", "10", "--min-degree", "1", "--max-degree", "4", "--train-graphs", "3",
               "--test-graphs", "2", "--test-samples", "2", "--batch-size", "4", "--mini-batches", "2", "-q"]


def test_the_default_data_folder_is_created_a_named_one_must_exist(tmp_path, monkeypatch):
    prepare_data_folder(tmp_path / "data" / "x.h5", default=True)
    assert (tmp_path / "data").is_dir()
    with pytest.raises(ValueError, match=r"--data: folder .*typo does not exist"):
        prepare_data_folder(tmp_path / "typo" / "x.h5", default=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"--data: .*file is a file, not a folder"):
        prepare_data_folder(tmp_path / "file" / "x.h5", default=True)

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ValueError, match=r"--generate: cannot create the folder .*ro for x.h5: Read-only file system"):
        prepare_data_folder(tmp_path / "ro" / "x.h5", default=True)


def test_link_scheduling_generate_in_a_fresh_folder_creates_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert link_scheduling.main(["--generate", "--preset", "quick", *TINY_GRAPHS, "--out", "run"]) == 0
    assert (tmp_path / "data" / "conflict_graphs_small_test.h5").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"]["path"] == str(tmp_path / "data" / "conflict_graphs_small_test.h5")  # absolute


def test_console_scripts_name_themselves(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fdtrain-figures", "--help"])
    assert program_name("python -m apps.figures") == "fdtrain-figures"
    monkeypatch.setattr(sys, "argv", ["/src/apps/figures/__main__.py"])
    assert program_name("python -m apps.figures") == "python -m apps.figures"


def test_help_descriptions_are_plain_text():
    assert plain_docstring("``python -m x`` runs :mod:`apps.robustness.sweep` and :func:`f`") == \
        "`python -m x` runs `apps.robustness.sweep` and `f`"


def test_provenance_records_the_version_and_only_the_toolkits_own_commit(monkeypatch):
    assert runs.library_versions()["fdtrain-gnn"] == __version__
    source = Path(runs.__file__).resolve().parents[1]

    def git(toplevel):
        return lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=f"{toplevel}\n{'a' * 40}\n", stderr="")

    monkeypatch.setattr(subprocess, "run", git(source))
    assert runs.provenance()["git_commit"] == "a" * 40
    monkeypatch.setattr(subprocess, "run", git(source.parent))  # installed inside another project's repository
    assert runs.provenance()["git_commit"] is None


def test_a_module_run_is_recorded_as_typed(monkeypatch):
    import types

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="apps.node_regression.__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert runs._command_line(["/src/apps/node_regression/__main__.py", "--epochs", "3"]) == \
        [sys.executable, "-m", "apps.node_regression", "--epochs", "3"]
    script = ["/venv/bin/fdtrain-node-regression", "-q"]
    assert runs._command_line(script) == script
