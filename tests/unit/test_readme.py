"""The README's configuration snippets are the files the tests use, word for word.

A block preceded by `<!-- snippet: PATH -->` must appear verbatim (as consecutive lines) in the
repository file PATH, so the README cannot drift from what `tests/e2e/test_cri.py`,
`tests/e2e/podman.py` and `tests/integration/test_conmon_monitor_vs_conmon.py` use.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- snippet: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.DOTALL)


def snippets() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    return [(match["path"], match["body"]) for match in SNIPPET.finditer(text)]


def test_readme_has_the_deploy_snippets() -> None:
    paths = {path for path, _ in snippets()}
    assert paths == {"deploy/containerd/pyshim-runtime.toml",
                     "deploy/containerd/quickstart.sh",
                     "deploy/kubernetes/runtimeclass.yaml",
                     "deploy/podman/containers.conf",
                     "deploy/crio/10-pyshim.conf"}


def test_the_quickstart_snippet_is_every_command_of_its_file() -> None:
    """The README shows all of quickstart.sh but its header (comments, `set`): what a reader
    types is exactly what tests/e2e/test_quickstart.py runs."""
    (body,) = [body for path, body in snippets() if path == "deploy/containerd/quickstart.sh"]
    lines = (REPO / "deploy/containerd/quickstart.sh").read_text().splitlines(keepends=True)
    first_command = next(index for index, line in enumerate(lines)
                         if line.strip() and not line.startswith(("#", "set ")))
    assert "".join(lines[first_command:]) == body


def test_each_snippet_is_taken_from_its_file() -> None:
    for path, body in snippets():
        source = (REPO / path).read_text()
        assert body in source, f"README snippet of {path} differs from the file:\n{body}"
        assert body.strip(), f"empty README snippet for {path}"
