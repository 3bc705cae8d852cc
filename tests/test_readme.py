"""The README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("---", 1)[0]  # the first section
    return re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)


def test_readme_starts_with_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    upscale, tests = commands
    assert "sr-tile upscale samples/" in upscale
    assert (ROOT / upscale.split("sr-tile upscale ")[1].split()[0]).is_file()
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_every_package_is_listed_for_installation():
    """pyproject lists packages by hand: a new family's package must be in it, or a
    non-editable install lacks it."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(root).parts)
             for p in root.glob("sr_tile/**/__init__.py")}
    assert found <= listed, sorted(found - listed)
