from __future__ import annotations

import importlib

import pytest

from chipforge import cli


def test_every_command_module_has_main() -> None:
    for name, (module, _) in cli.COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(getattr(mod, "main", None)), f"{module} (chipforge {name}) has no main()"
        assert hasattr(mod, "CONFIG_CLASS"), f"{module} has no CONFIG_CLASS"


def test_help_and_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    assert "corpus" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
