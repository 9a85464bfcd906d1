"""The README's usage example must run as written."""

import re
from pathlib import Path

import mwmae

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert isinstance(namespace["same"], mwmae.MaskedAutoencoder)
    assert namespace["emb"].shape == (2, 76, 960)
    assert namespace["out"].pred.shape == (4, 250, 64)
