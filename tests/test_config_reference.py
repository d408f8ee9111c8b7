"""`docs/configuration.md` is what `Settings` says: regenerate it when a setting changes."""

from __future__ import annotations

from pathlib import Path

from martlet_molt.config import Settings
from martlet_molt.config_reference import config_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_says_what_it_is_for() -> None:
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_the_configuration_page_is_up_to_date() -> None:
    assert PAGE.read_text(encoding="utf-8") == config_reference(), (
        "docs/configuration.md is out of date: "
        "python -m martlet_molt.config_reference > docs/configuration.md"
    )
