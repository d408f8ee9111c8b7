"""The local model's defaults, without loading it: which reply cap applies, and how sampling
defaults reach llama.cpp's parameters (only the fields given; llama.cpp keeps the rest)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from martlet_molt.config import DEFAULT_LOCAL_MAX_TOKENS, Settings
from martlet_molt.providers.local import Sampling


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("MARTLET_MAX_TOKENS", "MARTLET_LOCAL_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # pyright: ignore[reportCallIssue]


@pytest.mark.parametrize(
    ("env", "cap"),
    [
        ({}, DEFAULT_LOCAL_MAX_TOKENS),
        ({"MARTLET_MAX_TOKENS": "300"}, 300),
        ({"MARTLET_LOCAL_MAX_TOKENS": "16"}, 16),
        ({"MARTLET_MAX_TOKENS": "300", "MARTLET_LOCAL_MAX_TOKENS": "16"}, 16),
        ({"MARTLET_MAX_TOKENS": "16", "MARTLET_LOCAL_MAX_TOKENS": "300"}, 300),
    ],
)
def test_the_most_specific_cap_applies_to_local_replies(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], cap: int
) -> None:
    assert _settings(monkeypatch, **env).local_reply_cap == cap


def test_sampling_sets_only_the_fields_it_gives() -> None:
    params: Any = SimpleNamespace(temp=0.8, penalty_repeat=1.0, seed=4294967295)
    Sampling(temp=0.25, seed=7).apply(params)
    assert (params.temp, params.penalty_repeat, params.seed) == (0.25, 1.0, 7)
