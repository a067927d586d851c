"""The README's notebook example runs as written, on the Avazu sample in ../shared/data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AVAZU = ROOT.parent / "shared" / "data" / "avazu-sample" / "train.csv"


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    found = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert found, f"no python block after {heading!r}"
    return found.group(1)


@pytest.mark.skipif(not AVAZU.is_file(), reason="../shared/data/avazu-sample not here")
def test_readme_notebook_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_block("## Python API (notebooks)")
    # the example's relative paths are from the repository root; its save goes to tmp_path
    code = code.replace('"../shared/', f'"{ROOT.parent}/shared/')
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    auc = float(re.search(r"AUC on the rest: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert 0.6 < auc < 1.0, out  # it learned something (0.5: nothing)
    rec = namespace["rec"]
    report = rec.memory_report()  # type: ignore[attr-defined]
    assert report["total_bytes"] == (report["value_bytes"] + report["optimizer_bytes"]
                                     + report["metadata_bytes"] + report["index_bytes"]) > 0
    assert (tmp_path / "avazu-model" / "recommender.json").is_file()
