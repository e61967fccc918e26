"""docs/sampling.md's examples run, in order, as one script."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "sampling.md"


def test_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 7
    exec(compile("\n".join(blocks), str(DOC), "exec"), {})
