"""The Python examples of README.md run as written (in a scratch folder) and print what they claim."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_examples():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
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
