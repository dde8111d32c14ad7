"""The Python examples of README.md run as written (in a scratch folder) and print what they claim."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


MPI = [k for k, block in enumerate(BLOCKS) if "mpi4py" in block]


def test_readme_has_the_three_examples():
    assert len(BLOCKS) == 3 and len(MPI) == 1


@pytest.mark.parametrize("index", [k for k in range(len(BLOCKS)) if k not in MPI])
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md example {index + 1}", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    if "train_step" in BLOCKS[index]:
        assert "41 rounds per mini-batch" in out
        loss = float(re.search(r"loss ([0-9.]+)", out).group(1))
        assert loss < 0.05  # the toy target is learnt (it starts near 0.25)
    else:
        assert out.split()[:2] == ["25", "64"]


def test_readme_mpi_example_runs_under_mpiexec(tmp_path):
    """The MPI example, saved as the file it names and started as it says (two ranks), prints its result."""
    pytest.importorskip("mpi4py")
    import os
    import subprocess

    from core.distributed.launch import kill_session, mpi_environment, mpiexec_command

    script = tmp_path / "train_mpi.py"
    script.write_text(BLOCKS[MPI[0]])
    env = mpi_environment({**os.environ, "PYTHONPATH": str(README.parent)})
    log = tmp_path / "mpi.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(mpiexec_command(2, script), cwd=README.parent, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        status = proc.wait(timeout=180)
    finally:
        kill_session(proc.pid)
    text = log.read_text(errors="replace")
    assert status == 0, text
    found = re.search(r"P = 2: test MSE ([0-9.]+), 41 rounds per mini-batch, bytes sent per rank per mini-batch "
                      r"\[([0-9.]+), ([0-9.]+)\]", text)
    assert found, text
    assert float(found.group(1)) < 0.01 and float(found.group(2)) > 0 and float(found.group(3)) > 0
