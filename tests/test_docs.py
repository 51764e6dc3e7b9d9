"""The README and docs/ stay true to the code: every ``python workflows/X.py ...`` command they
show parses with that workflow's own parser, its ``--config`` exists and its ``--set`` keys and
values pass validation; every ``--set key=value`` quoted in prose does too; every relative
link points at a file; and the README stays a guide (about 250 lines at most)."""

import re
from pathlib import Path

import pytest

from avray.config import load_config
from tests.cluster.test_configs import _parse_with_workflow, _shell_commands

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
OPTIONAL = re.compile(r"\[[^\]]*\]")  # "[--set k=v ...]": a synopsis' optional part
INLINE_SET = re.compile(r"`[^`]*?--set ([\w.]+=[^`\s\]]+)[^`]*`")
PLACEHOLDERS = {"section.key=value", "key=value", "k=v"}
# What the pages show being refused, on purpose.
REFUSED_EXAMPLES = {"train.epochz=3", "data.fsp=4", "train.epochs=abc"}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


COMMENT = re.compile(r"\s+#.*$", re.MULTILINE)


def _workflow_commands() -> list[tuple[str, str, list[str], bool]]:
    """(page, script, argv, refused) for each command in a fenced block; ``refused``: the block
    shows the command failing (an ``error:`` line), so only its flags must parse."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            refused = any(line.startswith("error:") for line in block.splitlines())
            for cmd in _shell_commands(COMMENT.sub("", OPTIONAL.sub("", block))):
                cmd = [token for token in cmd if token != "..."]
                for i, token in enumerate(cmd[1:], start=1):
                    if token.startswith("workflows/") and token.endswith(".py") and "python" in cmd[i - 1]:
                        found.append((_rel(page), token, cmd[i + 1 :], refused))
    return found


COMMANDS = _workflow_commands()


def test_the_pages_show_commands_of_every_main_workflow():
    shown = {script for _, script, _, _ in COMMANDS}
    for script in ("prepare", "pretrain", "evaluate", "embed", "tune_losses", "extract_features", "demo"):
        assert f"workflows/{script}.py" in shown


@pytest.mark.parametrize(
    "page, script, argv, refused", COMMANDS, ids=[f"{p}:{' '.join([s, *a])[:70]}" for p, s, a, _ in COMMANDS]
)
def test_a_command_shown_parses_and_its_config_keys_exist(page, script, argv, refused):
    path = ROOT / script
    assert path.is_file(), f"{page}: {script} does not exist"
    args = _parse_with_workflow(path, argv)
    if refused:
        return
    config = getattr(args, "config", None)
    # A config shipped with avray must exist; a user's own (frozen.yaml) is theirs to write.
    shipped = config if config and config.startswith("workflows/") else None
    if shipped:
        assert (ROOT / shipped).is_file(), f"{page}: --config {shipped} does not exist"
    load_config(str(ROOT / shipped) if shipped else None, getattr(args, "overrides", []))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_set_in_prose_names_a_valid_key_and_value(page):
    overrides = set(INLINE_SET.findall(page.read_text())) - PLACEHOLDERS - REFUSED_EXAMPLES
    for override in sorted(overrides):
        load_config(None, [override])


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_point_at_files(page):
    for target in LINK.findall(page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{_rel(page)} links to {target}, which does not exist"


def test_the_readme_is_a_guide_not_a_notebook():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 260, len(lines)
    assert lines[0] == "# avray"
