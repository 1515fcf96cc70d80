"""HyperSteer as AxBench ``Model`` classes: ``HyperSteerNoContext``, ``HyperSteerInContext``,
``HyperSteerXAttn``.

AxBench drives a method per concept (a fresh instance, ``make_model/train/save`` in ``train.py``,
``load/pre_compute_mean_activations/predict_steer`` in ``inference.py``). A hypernetwork is one
model over all concepts, so:

* ``train()`` trains ONCE: the first call in a process whose ``{train_dir}/{Method}/`` holds no
  checkpoint runs :func:`train_stage.train_method` on the whole data dir (the parent of
  ``metadata_path``); every later call is a no-op. Under ``torchrun`` with several ranks, rank 0
  trains single-process and the other ranks wait for the checkpoint file (the launcher instead
  trains with DDP before AxBench's loop, which is the recommended path).
* ``save()`` writes nothing: the trainer already saved ``hypersteer_config.json`` and
  ``hypernet.safetensors``; AxBench's ``{name}_weight.pt`` rows mean nothing here.
* ``load()`` reads the checkpoint once per process and caches it (keyed by checkpoint path and
  base model); a missing checkpoint or one trained for another base model or layer is an error.
* ``predict_steer()`` steers every row with its own concept text and factor in shared batches.

The hyperparameters come from the sweep YAML (AxBench drops per-model keys it does not know):
the path given to :func:`configure` (the launcher does this), else ``$HYPERSTEER_CONFIG``, else
the ``--config`` argument of the running AxBench script.

Without AxBench installed the classes derive from :class:`LocalModel`, which has AxBench's
constructor signature, so they can be exercised (and tested) on the documented call sequence.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..model.config import ConfigError
from ..model.errors import MissingFileError
from ..model.fileio import read_json
from ..model.generation import SteerRow, steer_rows
from ..model.hypersteer import CONFIG_NAME, WEIGHTS_NAME, HyperSteer
from ..stages import common, train_stage
from ..stages.run_config import MethodSpec, RunConfig, load_run_config

logger = logging.getLogger(__name__)

CONFIG_ENV = "HYPERSTEER_CONFIG"
WAIT_ENV = "HYPERSTEER_TRAIN_WAIT_S"  # how long non-zero ranks wait for rank 0's checkpoint
STEER_COLUMNS = ("input", "original_prompt", "input_concept", "factor")


class LocalModel:
    """Stand-in for ``axbench.models.model.Model`` when AxBench is not importable: the same
    constructor signature and the attributes AxBench's scripts rely on."""

    def __init__(self, model, tokenizer, layer, training_args=None, **kwargs):
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.training_args = training_args
        self.max_activations: dict = {}
        self.device = kwargs.get("device", "cuda" if torch.cuda.is_available() else "cpu")
        self.seed = kwargs.get("seed", 42)
        self.steering_layers = kwargs.get("steering_layers", None)
        self.num_of_layers = len(self.steering_layers) if self.steering_layers else 1
        self.dump_dir = kwargs.get("dump_dir", None)


try:
    from axbench.models.model import Model as ModelBase  # type: ignore[import-not-found]
    AXBENCH_BASE = True
except ImportError:
    ModelBase = LocalModel
    AXBENCH_BASE = False


# ----------------------------------------------------------------------------------- config

_CONFIG_PATH: str | None = None


def configure(config_path: str | os.PathLike | None) -> None:
    """Tell the classes which sweep YAML holds their hyperparameters (None: forget it)."""
    global _CONFIG_PATH
    _CONFIG_PATH = None if config_path is None else str(config_path)


def _argv_config(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def resolve_config_path() -> str:
    path = _CONFIG_PATH or os.environ.get(CONFIG_ENV) or _argv_config(sys.argv)
    if not path:
        raise ConfigError(
            "HyperSteer reads its hyperparameters from the sweep YAML, but none was found: run "
            "through `python -m axbench_hypersteer.axbench`, pass --config to the AxBench "
            f"script, or set {CONFIG_ENV}")
    return path


# ------------------------------------------------------------------------------- processes

def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def _single_process() -> Iterator[None]:
    """Hide torchrun's variables so the trainer runs on this rank alone (no DDP)."""
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
             if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _wait_for_checkpoint(root: Path, method: str) -> None:
    limit = float(os.environ.get(WAIT_ENV, 48 * 3600))
    start = time.monotonic()
    while not common.is_trained(root, method):
        if time.monotonic() - start > limit:
            raise TimeoutError(f"waited {limit:.0f}s for rank 0 to train "
                               f"{common.method_dir(root, method)} (set {WAIT_ENV})")
        time.sleep(10)


def check_no_eval_concepts(run: RunConfig, data_dir: str | Path) -> None:
    """Held-out runs (``hypersteer.eval_concepts``): refuse training data that contains an
    evaluation concept, naming the command that writes a held-out copy."""
    if not run.eval_concepts:
        return
    from ..stages.data import generate_dir, load_metadata, normalise_concept
    from ..stages.splits import load_eval_concepts

    meta = load_metadata(generate_dir(data_dir) / "metadata.jsonl")
    evals = {normalise_concept(c) for c in load_eval_concepts(run.eval_concepts, meta)}
    leaked = [m["concept"] for m in meta if normalise_concept(m["concept"]) in evals]
    if leaked:
        raise ConfigError(
            f"{run.path}: held-out run, but {len(leaked)} evaluation concept(s) of "
            f"{run.eval_concepts} are in the training data {data_dir} (e.g. {leaked[0]!r}); "
            f"write a held-out copy first: python -m axbench_hypersteer.stages.splits --data_dir "
            f"{data_dir} --eval_concepts {run.eval_concepts} --mode heldout --out_dir <dir>, "
            "then train on <dir> (--overwrite_data_dir <dir>/generate)")


# ----------------------------------------------------------------------------------- cache

_CACHE: dict[tuple[str, int], tuple[int, HyperSteer]] = {}


def clear_cache() -> None:
    """Forget every loaded hypernetwork (they keep their base model alive while cached)."""
    _CACHE.clear()


def _check_layers(ckpt: Path, train_dir: Path, layer) -> None:
    saved = read_json(ckpt / CONFIG_NAME).get("hypersteer", {})
    steering_layer = saved.get("steering_layer")
    config_json = train_dir / "config.json"
    if not config_json.exists():
        raise ConfigError(f"{config_json} is missing (AxBench inference would silently use "
                          "layer 0); rerun train")
    axbench_layer = read_json(config_json).get("layer")
    if axbench_layer != steering_layer:
        raise ConfigError(f"{ckpt}: checkpoint steers layer {steering_layer}, but {config_json} "
                          f"says layer {axbench_layer}; they were trained apart, rerun train")
    if layer is not None and int(layer) != steering_layer:
        raise ConfigError(f"{ckpt}: checkpoint steers layer {steering_layer}, but AxBench passed "
                          f"layer={layer}")


def load_trained_method(train_dir: str | Path, method: str, model, tokenizer,
                        layer: int | None = None) -> HyperSteer:
    """The trained hypernetwork of ``{train_dir}/{method}``, read from disk once per process.

    Raises MissingFileError without a checkpoint, ConfigError for another base model or layer.
    """
    train_dir = Path(train_dir)
    ckpt = train_dir / method
    if not (ckpt / CONFIG_NAME).exists() or not (ckpt / WEIGHTS_NAME).exists():
        raise MissingFileError(
            f"no trained HyperSteer checkpoint at {ckpt} (expected {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}); run train first: python -m axbench_hypersteer.axbench train "
            "--config <yaml> --dump_dir <dump>")
    _check_layers(ckpt, train_dir, layer)
    key = (str(ckpt.resolve()), id(model))
    stamp = (ckpt / WEIGHTS_NAME).stat().st_mtime_ns
    cached = _CACHE.get(key)
    if cached is not None and cached[0] == stamp and cached[1].base_model is model:
        return cached[1]
    hs = common.load_checkpoint(ckpt, (model, tokenizer))  # checks hidden size / depth / vocab
    _CACHE[key] = (stamp, hs)
    logger.info("loaded %s from %s", method, ckpt)
    return hs


# ----------------------------------------------------------------------------------- model

class _Pending(nn.Module):
    """``.ax`` before a hypernetwork is loaded: AxBench casts ``.ax`` right after make_model."""


class HyperSteerModel(ModelBase):
    """Shared implementation; subclasses only fix the method name (= class name = artifact key)."""

    method_name = ""

    def __init__(self, model, tokenizer, layer, training_args=None, **kwargs):
        super().__init__(model, tokenizer, layer, training_args=training_args, **kwargs)
        if not hasattr(self, "dump_dir"):
            self.dump_dir = kwargs.get("dump_dir", None)
        self._hs: HyperSteer | None = None
        self._make_kwargs: dict = {}

    def __str__(self) -> str:
        return self.method_name

    # ----- the module AxBench sees --------------------------------------------------------
    @property
    def ax(self) -> nn.Module:
        """The hypernetwork once loaded; a parameterless placeholder before."""
        hs = self.__dict__.get("_hs")
        if hs is not None:
            return hs.hypernet
        if self.__dict__.get("_pending") is None:
            self.__dict__["_pending"] = _Pending()
        return self.__dict__["_pending"]

    @ax.setter
    def ax(self, module: nn.Module) -> None:  # AxBench's base ``to`` assigns ``self.ax``
        hs = self.__dict__.get("_hs")
        if hs is None:
            self.__dict__["_pending"] = module if isinstance(module, nn.Module) else None
        elif module is not hs.hypernet:
            raise ValueError(f"{self}: the hypernetwork cannot be replaced through .ax")

    @property
    def hypersteer(self) -> HyperSteer | None:
        return self._hs

    def to(self, device):
        self.device = device
        if self._hs is not None:
            self._hs.to(device)
        return self

    # ----- train.py ------------------------------------------------------------------------
    def make_model(self, **kwargs):
        """Train mode builds nothing (AxBench calls this once per concept); it records
        ``dump_dir`` (the train dir) and ``metadata_path`` for :meth:`train`."""
        self._make_kwargs.update(kwargs)
        if kwargs.get("dump_dir") is not None:
            self.dump_dir = kwargs["dump_dir"]
        if kwargs.get("mode", "train") != "train" and self.dump_dir is not None:
            self.load(dump_dir=self.dump_dir, **{k: v for k, v in kwargs.items()
                                                  if k != "dump_dir"})

    def _train_dir(self) -> Path:
        if self.dump_dir is None:
            raise ValueError(f"{self}: call make_model(dump_dir=<dump>/train, ...) first")
        return Path(self.dump_dir)

    def _spec(self) -> tuple[RunConfig, MethodSpec]:
        run = load_run_config(resolve_config_path())
        spec = run.method(self.method_name)
        if self.layer is not None and int(self.layer) != run.layer:
            raise ConfigError(f"{run.path}: train.layer is {run.layer} but AxBench passed "
                              f"layer={self.layer}")
        return run, spec

    def train(self, examples, **kwargs):
        """Train the hypernetwork over ALL concepts the first time; later calls do nothing.
        ``examples`` (one concept's rows) is not used: the trainer reads the whole data dir."""
        train_dir = self._train_dir()
        if train_dir.name != "train":
            raise ValueError(f"{self}: expected AxBench's <dump>/train as dump_dir, "
                             f"got {train_dir}")
        root = train_dir.parent
        if common.is_trained(root, self.method_name):
            logger.info("%s: already trained in %s; train() is a no-op", self,
                        common.method_dir(root, self.method_name))
            return
        metadata_path = kwargs.get("metadata_path") or self._make_kwargs.get("metadata_path")
        if not metadata_path:
            raise ValueError(f"{self}: train() needs metadata_path (AxBench passes it)")
        data_dir = Path(metadata_path).parent
        run, spec = self._spec()
        check_no_eval_concepts(run, data_dir)
        rank, world = _rank_world()
        base = (self.model, self.tokenizer)
        if world > 1 and rank != 0:
            _wait_for_checkpoint(root, self.method_name)
            return
        logger.info("%s: training once over every concept of %s", self, data_dir)
        if world > 1:
            with _single_process():
                train_stage.train_method(run, spec, data_dir, root, base=base)
        else:
            train_stage.train_method(run, spec, data_dir, root, base=base)

    def save(self, dump_dir, **kwargs):
        """Nothing to write: the trainer saved the checkpoint (no ``{name}_weight.pt`` rows)."""
        return None

    # ----- inference.py --------------------------------------------------------------------
    def load(self, dump_dir=None, **kwargs):
        """Attach the trained hypernetwork of ``{dump_dir}/{Method}`` (AxBench's train dir)."""
        train_dir = Path(dump_dir) if dump_dir is not None else self._train_dir()
        self.dump_dir = train_dir
        self._hs = load_trained_method(train_dir, self.method_name, self.model, self.tokenizer,
                                       self.layer)
        return self._hs

    def pre_compute_mean_activations(self, *args, **kwargs):
        """No-op: factors scale the hypernetwork's own vectors (1.0 = training scale), not a
        latent max activation."""
        self.max_activations = {}
        return self.max_activations

    @torch.no_grad()
    def predict_steer(self, input_df, concept_id=None, sae_link=None, sae_id=None,
                      batch_size=64, eval_output_length=1, temperature=1.0, prefix_length=1,
                      positions="all", use_synergy=False, disable_neuronpedia_max_act=False,
                      **kwargs) -> dict[str, list]:
        """Per-row ``steered_generation``, ``perplexity`` (unsteered model on the generated
        tokens) and ``strength`` (factor × ‖Δ‖), in the row order of ``input_df``.

        Each row is steered by its own ``input_concept`` and ``factor``; the prompt is the
        chat-formatted ``input`` column, the in-context variant also reads ``original_prompt``.
        """
        if self._hs is None:
            raise RuntimeError(f"{self}: call load(dump_dir=<train dir>, ...) before predict_steer")
        missing = [c for c in STEER_COLUMNS if c not in input_df.columns]
        if missing:
            raise ValueError(f"{self}.predict_steer: input_df lacks column(s) {missing}")
        if use_synergy:
            logger.warning("%s: use_synergy is ignored (steering comes from input_concept)", self)
        rows = [SteerRow(str(r.input), str(r.original_prompt), str(r.input_concept),
                         float(r.factor))
                for r in input_df[list(STEER_COLUMNS)].itertuples(index=False)]
        if not rows:
            return {"steered_generation": [], "perplexity": [], "strength": []}
        return steer_rows(self._hs, rows, int(batch_size), int(eval_output_length),
                          float(temperature), seed=int(self.seed or 0))

    def predict_latent(self, examples, **kwargs):
        raise NotImplementedError(
            f"{self} is a steering-only method: it has no concept detector, so latent inference "
            "is undefined. Keep it out of latent runs (the launcher adds it to AxBench's "
            "LATENT_EXCLUDE_MODELS).")

    predict_latents = predict_latent

    def get_logits(self, concept_id, k=10):
        return [None], [None]


class HyperSteerNoContext(HyperSteerModel):
    """The hypernetwork reads the steering prompt only."""
    method_name = "HyperSteerNoContext"


class HyperSteerInContext(HyperSteerModel):
    """The hypernetwork reads the steering prompt and the base prompt as one text."""
    method_name = "HyperSteerInContext"


class HyperSteerXAttn(HyperSteerModel):
    """The hypernetwork cross-attends to the base model's residual stream over the prompt."""
    method_name = "HyperSteerXAttn"


__all__ = ["AXBENCH_BASE", "HyperSteerInContext", "HyperSteerModel", "HyperSteerNoContext",
           "HyperSteerXAttn", "LocalModel", "check_no_eval_concepts", "clear_cache", "configure",
           "load_trained_method", "resolve_config_path"]

