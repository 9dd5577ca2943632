"""Every example of the README and of docs/*.md runs, so that none of them rots.

Each ```bash / ```sh / ```console / ```python block is one test, named by its file and its index
in that file. A block runs in a fresh copy of a small workspace (`workspace`, below) with the venv's
bin first on PATH (so `wordlm` and `python` are this checkout's) and WORDLM_MODEL set to a tiny model
over WikiText-2's vocabulary, so that the commands the docs show (default model, `runs/wt2/best`,
`runs/wt2-int8`) run in a second or two each.

A block that cannot run here is marked in the markdown by an HTML comment right before it (blank
lines may sit between them):
- `<!-- doc-test: skip (why) -->`: not run (make demo, pip install, a cluster, hours of training);
  reported as a skip with the reason, and counted;
- `<!-- doc-test: server -->`: run while `wordlm serve runs/wt2-int8` listens; the block's port 8000
  is replaced by the test server's.
Every other block must exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_corpus

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"bash", "sh", "shell", "console", "python", "py"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[^\n]*$")
MARK = re.compile(r"<!--\s*doc-test:\s*(?P<what>skip|server)\b\s*(?P<why>.*?)\s*-->")
BLOCK_TIMEOUT = 180


@dataclass
class Block:
    file: Path
    index: int  # among the file's runnable blocks
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str | None  # "skip", "server" or None
    why: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}#{self.index}"


def blocks(path: Path) -> list[Block]:
    """The runnable fenced blocks of a markdown file, with the doc-test mark right before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m["fence"], m["lang"].lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in RUN:
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mark = MARK.fullmatch(lines[k].strip()) if k >= 0 else None
            out.append(
                Block(
                    path,
                    len(out),
                    start + 1,
                    lang,
                    "\n".join(lines[start + 1 : j]) + "\n",
                    mark["what"] if mark else None,
                    mark["why"].strip("() ") if mark else "",
                )
            )
        i = j + 1
    return out


ALL = [b for path in DOCS for b in blocks(path)]


def shell_code(block: Block) -> str:
    """A console block's commands are its `$ ` lines; a bash block is run as it is."""
    if block.lang != "console":
        return block.code
    return "\n".join(line[2:] for line in block.code.splitlines() if line.startswith("$ ")) + "\n"


# ---- the workspace: a tiny model over WikiText-2's vocabulary, quantized too, and a small corpus ----


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    import torch

    from wordlm.checkpoint import Checkpoint, save_checkpoint
    from wordlm.config import preset
    from wordlm.data import load_corpus
    from wordlm.quant import get_scheme
    from wordlm.quantize import quantize_checkpoint
    from wordlm.train.model import RecurrentLM, checkpoint_tensors

    root = tmp_path_factory.mktemp("docs-workspace")
    torch.manual_seed(0)
    vocab = load_corpus().vocab  # the bundled WikiText-2's: prompts such as "The game was" are words of it
    model = RecurrentLM(preset("tiny", len(vocab)))
    ckpt = Checkpoint(model.cfg, vocab, checkpoint_tensors(model), meta={"note": "tests/test_docs.py"})
    save_checkpoint(ckpt, root / "runs" / "wt2" / "best")
    save_checkpoint(quantize_checkpoint(ckpt, get_scheme("int8")), root / "runs" / "wt2-int8")
    make_corpus(root / "data")  # `--data data/` in the training examples
    (root / "docs").symlink_to(ROOT / "docs")  # docs/onnx_numpy_example.py
    return root


def env_for(root: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
        "WORDLM_MODEL": str(root / "runs" / "wt2" / "best"),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "MPLBACKEND": "Agg",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(workspace) -> int:
    """`wordlm serve runs/wt2-int8` on a free port, for the blocks marked `server`."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wordlm.cli", "serve", "runs/wt2-int8", "--port", str(port)],
        cwd=workspace,
        env=env_for(workspace),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the docs' test server did not start")
            time.sleep(0.2)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


# ---- the tests ----


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_block_runs(block: Block, workspace: Path, tmp_path: Path, request) -> None:
    if block.mark == "skip":
        pytest.skip(f"marked in the markdown: {block.why}")
    cwd = tmp_path / "ws"
    shutil.copytree(workspace, cwd, symlinks=True)
    code = shell_code(block) if block.lang not in ("python", "py") else block.code
    if block.mark == "server":
        port = request.getfixturevalue("server")
        code = re.sub(r"(localhost|127\.0\.0\.1):8000", rf"\1:{port}", code)
    if block.lang in ("python", "py"):
        (cwd / "block.py").write_text(code, encoding="utf-8")
        cmd = [sys.executable, "block.py"]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
    r = subprocess.run(cmd, cwd=cwd, env=env_for(cwd), capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert r.returncode == 0, (
        f"{block.id} (line {block.line}) exited {r.returncode}\n--- block\n{code}\n--- stdout\n{r.stdout[-3000:]}"
        f"\n--- stderr\n{r.stderr[-3000:]}"
    )


def test_blocks_are_found_and_marks_are_explained() -> None:
    """Every page has its examples parsed; a skip says why; no mark is left dangling before prose."""
    assert len(ALL) >= 20, f"only {len(ALL)} example blocks found"
    for b in ALL:
        if b.mark == "skip":
            assert b.why, f"{b.id}: a doc-test skip needs its reason, e.g. <!-- doc-test: skip (needs a GPU) -->"
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if MARK.fullmatch(line.strip()):
                k = n + 1
                while k < len(lines) and not lines[k].strip():
                    k += 1
                m = FENCE.match(lines[k]) if k < len(lines) else None
                assert m and m["lang"].lower() in RUN, f"{path.name}:{n + 1}: a doc-test mark must precede a block"
    skipped = [b for b in ALL if b.mark == "skip"]
    print(f"{len(ALL)} example blocks: {len(ALL) - len(skipped)} run, {len(skipped)} marked skip")


def test_paths_and_links_exist() -> None:
    """Every repository path a page names in backticks (`wordlm/...`, `benchmarks/...`, ...) and every
    relative link of the README exists, so that a moved file does not leave the docs pointing nowhere
    (mkdocs --strict checks the links inside docs/)."""
    named = re.compile(r"`((?:wordlm|tests|benchmarks|docs|models)/[A-Za-z0-9_./-]*)`")
    link = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")
    missing = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        missing += [f"{path.name}: {p}" for p in named.findall(text) if not (ROOT / p.rstrip(".")).exists()]
        if path.name == "README.md":
            missing += [f"README.md: link {p}" for p in link.findall(text) if not (ROOT / p).exists()]
    assert not missing, "named but missing: " + ", ".join(missing)


def test_commands_page_lists_every_flag() -> None:
    """docs/commands.md names every command and every flag of `wordlm`'s parser."""
    import argparse

    from wordlm.cli.main import build_parser

    page = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    missing = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if f"wordlm {name}" not in page:
                    missing.append(f"wordlm {name}")
                for a in sub._actions:
                    for flag in a.option_strings:
                        if flag.startswith("--") and flag != "--help" and f"`{flag}" not in page:
                            missing.append(f"{name} {flag}")
    assert not missing, f"docs/commands.md does not mention: {', '.join(missing)}"


@pytest.mark.parametrize(
    "args",
    [
        ("eval", "runs/wt2-int8", "--max-tokens", "2000"),
        ("demo", "--max-tokens", "300", "--words", "5"),
    ],
    ids=["eval", "demo"],
)
def test_piped_output_has_no_blank_lines(workspace: Path, args: tuple[str, ...]) -> None:
    """Progress bars are drawn on a terminal only: the piped output of eval and demo is their lines,
    with no carriage returns and no blank lines left by a bar."""
    r = subprocess.run(
        [sys.executable, "-m", "wordlm.cli", *args],
        cwd=workspace,
        env=env_for(workspace),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    for stream in (r.stdout, r.stderr):
        assert "\r" not in stream
        assert all(line.strip() for line in stream.splitlines()), repr(stream)
    assert "loss" in r.stdout
