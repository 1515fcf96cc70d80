"""Fidelity: does our cross-attention hypernetwork learn per step as the official HyperSteer code does?

Issue 17's setup, both sides from the same starting point:
  * base: a random tiny Gemma-2 (hidden 256, 6 layers, steering layer 3) whose every >=2-D weight
    is drawn at std 0.2, so that one steering vector can move the loss;
  * data: 600 positive Concept10 training rows (batch 4, one epoch = 150 updates) and 32 held-out
    positives (never trained on);
  * hypernetwork: 2 blocks initialised from the base model's first blocks, fp32, AdamW,
    linear decay without warmup, clipping at 1.0 (both sides' defaults);
  * ONE evaluator scores the vectors of both sides: the held-out answer-token loss with the
    vector added to block 3's output at every position (``heldout_loss``).

The official side is the AxBench fork's own ``HyperSteer.train`` (commit c01a22a), imported at run
time from a checkout given by ``--official`` / ``$HYPERSTEER_OFFICIAL`` and run unchanged in a
subprocess; nothing of it is copied here. It needs transformers 4.45 (it imports Gemma-2 classes
that later versions removed): ``--official-pythonpath`` / ``$HYPERSTEER_OFFICIAL_PYTHONPATH`` is put
first on that subprocess's path, e.g. a folder made with
``pip install --no-deps --target /tmp/tf445 transformers==4.45.2 tokenizers==0.20.3``.
Without the official checkout the script prints one line saying so and exits 0 (``--ours-only``
runs our side alone).

    python benchmarks/fidelity_vs_official.py --official /tmp/official \\
        --official-pythonpath /tmp/tf445 [--lr 8e-5 1e-3] [--steps 150]

``--time-to-loss`` instead checks the defaults a user gets (issues 16 and 24), per seed (the seed
draws the data split and both sides' hypernetwork init): both curves every ``--every`` steps at lr
8e-5; our share of the official held-out loss drop at each evaluated step (learning per step); the
training time (process CPU primary, wall too; evaluation excluded) our trainer needs to reach the
official loop's ``--steps``-step loss over the official loop's time for its ``--steps`` steps; and
the CPU time per step. ``--plain`` adds a run with every throughput option off (the paper's loop):

    python benchmarks/fidelity_vs_official.py --official /tmp/official \\
        --official-pythonpath /tmp/tf445 --time-to-loss [--every 10] [--seeds 42 43] [--plain]

``--step-cost`` instead times a training step of the current block against the same block without
what the fix added (post-norm, query RoPE, soft-capping), interleaved in one process.

Reusable pieces (another benchmark may import them): ``build_setup``, ``train_ours``,
``train_official``, ``import_official``, ``heldout_loss``, ``curve``, ``step_cost``,
``time_to_loss``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets the offline environment, puts the repo on sys.path)

from axbench_hypersteer.model.collate import SteeringCollator
from axbench_hypersteer.model.tokens import format_prompt  # noqa: E402
from axbench_hypersteer.model.config import HyperSteerConfig, TrainConfig  # noqa: E402
from axbench_hypersteer.model.hypersteer import HyperSteer  # noqa: E402
from axbench_hypersteer.model.steering import Steerer, SteeringSource  # noqa: E402
from axbench_hypersteer.train.trainer import Trainer  # noqa: E402
from axbench_hypersteer.testing.tiny import (  # noqa: E402
    build_tiny_gemma2, build_tiny_tokenizer, redraw_matrices_, save_tiny)

OFFICIAL_ENV = "HYPERSTEER_OFFICIAL"
OFFICIAL_PYTHONPATH_ENV = "HYPERSTEER_OFFICIAL_PYTHONPATH"
EVAL_STEPS = (0, 10, 50, 100, 150)
# Every throughput option off: the paper's loop (the defaults bucket by length; the prefix cache's
# auto mode is off in these one-epoch runs, where it would only record).
PLAIN = {"length_bucket_group": 0, "prefix_cache": "off"}


@dataclass
class Setup:
    tokenizer: Any
    base: torch.nn.Module
    train_rows: list[dict]
    heldout_rows: list[dict]
    steering_layer: int = 3
    num_blocks: int = 2
    heads: int = 4
    batch_size: int = 4
    seed: int = 42
    extra: dict = field(default_factory=dict)


def build_setup(hidden: int = 256, layers: int = 6, heads: int = 4, steering_layer: int = 3,
                num_blocks: int = 2, std: float = 0.2, n_train: int = 600, n_heldout: int = 32,
                batch_size: int = 4, seed: int = 42) -> Setup:
    """The issue's tiny base model (every >=2-D weight redrawn at ``std``) and Concept10 split
    (train rows first, then held-out rows, from one seeded shuffle of the positives)."""
    import random

    tokenizer = build_tiny_tokenizer()
    base = redraw_matrices_(build_tiny_gemma2(tokenizer, hidden_size=hidden, num_layers=layers,
                                              num_heads=heads, seed=0), std)
    _, rows = _common.concept10()
    random.Random(seed).shuffle(rows)
    if len(rows) < n_train + n_heldout:
        raise SystemExit(f"need {n_train + n_heldout} positive rows, the data has {len(rows)}")
    return Setup(tokenizer, base, rows[:n_train], rows[n_train:n_train + n_heldout],
                 steering_layer, num_blocks, heads, batch_size, seed)


@torch.no_grad()
def heldout_loss(setup: Setup, vectors: torch.Tensor | None) -> float:
    """Mean answer-token loss of the held-out rows with ``vectors`` [N, d] (row i's vector) added
    to block ``steering_layer``'s output at every position; ``None`` = unsteered."""
    batch = SteeringCollator(setup.tokenizer)(setup.heldout_rows)
    n, d = batch["input_ids"].shape[0], setup.base.config.hidden_size
    delta = torch.zeros(n, d) if vectors is None else vectors.float()
    source = SteeringSource(torch.ones(n), delta=delta)
    out = Steerer(setup.base, setup.steering_layer, backend="hook").forward(
        source, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        labels=batch["labels"], use_cache=False)
    return float(out.loss)


def _ours_vectors(hs: HyperSteer, rows: Sequence[dict]) -> torch.Tensor:
    batch = SteeringCollator(hs.tokenizer)(rows)
    was = hs.hypernet.training
    hs.hypernet.eval()
    with torch.no_grad():
        vecs = hs.compute_vectors(batch["hyper_input_ids"], batch["hyper_attention_mask"],
                                  batch["input_ids"], batch["attention_mask"],
                                  batch["context_mask"])
    hs.hypernet.train(was)
    return vecs.detach().clone()


class _Stop(Exception):
    pass


class TrainingClock:
    """Process CPU and wall seconds since ``start``, less the time spent inside ``paused()``:
    the training time of a run that evaluates as it goes."""

    def __init__(self) -> None:
        self._origin = self._now()
        self._paused = (0.0, 0.0)

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    def elapsed(self) -> tuple[float, float]:
        now = self._now()
        return tuple(n - o - p for n, o, p in zip(now, self._origin, self._paused))

    def paused(self):
        clock = self

        class _Pause:
            def __enter__(self):
                self.at = clock._now()

            def __exit__(self, *exc):
                clock._paused = tuple(p + n - a for p, n, a in
                                      zip(clock._paused, clock._now(), self.at))
        return _Pause()


def train_ours(setup: Setup, lr: float, steps: int = 150, eval_steps: Sequence[int] = EVAL_STEPS,
               config: dict | None = None, patch: Callable[[HyperSteer], None] | None = None,
               stop_at: int | None = None, train_config: dict | None = None,
               times: dict[int, tuple[float, float]] | None = None) -> dict[int, torch.Tensor]:
    """Train our hypernetwork with the package's Trainer; returns {step: held-out vectors}.
    ``config`` overrides HyperSteerConfig fields, ``train_config`` TrainConfig fields; ``patch``
    may modify the model before training (ablations); ``stop_at`` ends the run after that many
    updates of the ``steps``-update schedule (cheap ablations that stay comparable with a full
    run's curve). ``times``, when given, receives {step: (CPU s, wall s)} of training from the
    Trainer's construction (data preparation included, evaluation excluded)."""
    import pandas as pd

    torch.manual_seed(setup.seed)
    cfg = HyperSteerConfig(variant="xattn", steering_layer=setup.steering_layer,
                           num_blocks=setup.num_blocks, cross_attention_heads=setup.heads,
                           init="pretrained", seed=setup.seed, **(config or {}))
    hs = HyperSteer.from_base(setup.base, setup.tokenizer, cfg, backend="hook")
    if patch is not None:
        patch(hs)
    frame = pd.DataFrame(setup.train_rows)
    with tempfile.TemporaryDirectory() as tmp:
        clock = TrainingClock()
        trainer = Trainer(hs, frame, TrainConfig(
            batch_size=setup.batch_size, n_epochs=1, lr=lr, max_steps=steps, dev_examples=0,
            eval_every=10**6, checkpoint_every=10**6, log_every=10**6, seed=setup.seed,
            **(train_config or {})), tmp, progress=False)
        vectors: dict[int, torch.Tensor] = {}
        wanted = set(eval_steps)
        if 0 in wanted:
            with clock.paused():
                vectors[0] = _ours_vectors(hs, setup.heldout_rows)
        count = [0]

        def after_step(optimizer, args, kwargs):
            count[0] += 1
            if times is not None:
                times[count[0]] = clock.elapsed()
            if count[0] in wanted:
                with clock.paused():
                    vectors[count[0]] = _ours_vectors(hs, setup.heldout_rows)
            if stop_at is not None and count[0] >= stop_at:
                raise _Stop

        trainer.optimizer.register_step_post_hook(after_step)
        try:
            trainer.train()
        except _Stop:
            pass
    return vectors


# ------------------------------------------------------------------------------- official side


def official_path(arg: str | None) -> Path | None:
    path = arg or os.environ.get(OFFICIAL_ENV)
    if not path:
        return None
    path = Path(path)
    return path if (path / "axbench" / "models" / "hypernet" / "modeling_hypernet.py").exists() \
        else None


def train_official(setup: Setup, lr: float, official: Path, pythonpath: str | None,
                   steps: int = 150, eval_steps: Sequence[int] = EVAL_STEPS,
                   timeout: float = 3600,
                   times: dict[int, tuple[float, float]] | None = None) -> dict[int, torch.Tensor]:
    """Run the official ``HyperSteer.train`` (one epoch over the training rows) in a subprocess;
    returns {step: held-out vectors}, computed as the official ``predict_steer`` does.
    ``times``, when given, receives {step: (CPU s, wall s)} of training from the call of the
    official ``train`` (its data preparation included, evaluation excluded)."""
    if steps * setup.batch_size != len(setup.train_rows):
        raise ValueError("the official loop trains whole epochs: steps * batch must equal rows")
    tok = setup.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_tiny(setup.base, tok, tmp / "base")

        def official_row(r):
            return {"input": format_prompt(tok, r["input"]), "output": r["output"],
                    "output_concept": r["concept"], "concept_id": int(r["concept_id"])}

        job = {"base": str(tmp / "base"), "lr": lr, "layer": setup.steering_layer,
               "num_blocks": setup.num_blocks, "batch_size": setup.batch_size,
               "seed": setup.seed, "eval_steps": list(eval_steps),
               "train": [official_row(r) for r in setup.train_rows],
               "heldout": [official_row(r) for r in setup.heldout_rows],
               "out": str(tmp / "vectors.pt")}
        (tmp / "job.json").write_text(json.dumps(job))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
        proc = subprocess.run([sys.executable, __file__, "--_worker", str(tmp / "job.json"),
                               "--official", str(official)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"official run failed:\n{proc.stderr[-4000:]}")
        result = torch.load(tmp / "vectors.pt")
        if times is not None:
            times.update(result["times"])
        return result["vectors"]


def import_official(official: Path):
    """The official ``HyperSteer`` class and ``get_prefix_length``, imported from the checkout
    without executing ``axbench/__init__.py`` (which imports every method and its extra
    dependencies); modules the training path never calls are stubbed. Run it under transformers
    4.45 (the official code imports Gemma-2 classes that later versions removed)."""
    import importlib.machinery
    import types

    root = official / "axbench"
    for name, path in (("axbench", root), ("axbench.models", root / "models"),
                       ("axbench.utils", root / "utils"), ("axbench.scripts", root / "scripts")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    for name in ("wandb", "seaborn", "einops"):  # imported at module top, unused by training
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = stub
    sys.modules["axbench.scripts.inference"] = types.ModuleType("axbench.scripts.inference")
    sys.modules["axbench.scripts.inference"].prepare_df = None  # imported by model.py, unused
    from axbench.models.hypersteer import HyperSteer as OfficialHyperSteer
    from axbench.utils.model_utils import get_prefix_length

    return OfficialHyperSteer, get_prefix_length


def _official_worker(job_path: str, official: Path) -> None:
    """Runs in the subprocess (transformers 4.45): calls the official training loop unchanged."""
    import types

    import pandas as pd
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    OfficialHyperSteer, get_prefix_length = import_official(official)

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(1)
    torch.manual_seed(job["seed"])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    tok = AutoTokenizer.from_pretrained(job["base"])
    model = AutoModelForCausalLM.from_pretrained(job["base"], attn_implementation="eager",
                                                 torch_dtype=torch.float32).eval()
    args = types.SimpleNamespace(lr=job["lr"], weight_decay=0.0, n_epochs=1,
                                 gradient_accumulation_steps=1, batch_size=job["batch_size"],
                                 topk=None)
    hs = OfficialHyperSteer(model, tok, layer=job["layer"], training_args=args, device="cpu",
                            seed=job["seed"])
    hs.make_model(mode="train", low_rank_dimension=1, num_hidden_layers=job["num_blocks"],
                  intervention_type="addition", hypernet_name_or_path=job["base"],
                  hypernet_initialize_from_pretrained=True)
    hs.concept_embedding.float()  # make_model casts to bf16; the comparison runs in fp32
    heldout = pd.DataFrame(job["heldout"])

    @torch.no_grad()
    def vectors():
        # As the official predict_steer computes them: left-padded prompt, block-l input.
        old = tok.padding_side
        tok.padding_side = "left"
        inputs = tok(heldout["input"].tolist(), return_tensors="pt", padding=True)
        tok.padding_side = old
        concept = hs.hypernet_tokenizer(heldout["output_concept"].tolist(), return_tensors="pt",
                                        add_special_tokens=True, padding=True)
        hidden = hs.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                          output_hidden_states=True).hidden_states[hs.layer]
        return hs.concept_embedding(
            input_ids=concept["input_ids"], attention_mask=concept["attention_mask"],
            base_encoder_hidden_states=hidden, base_encoder_attention_mask=inputs["attention_mask"],
            output_hidden_states=False).last_hidden_state.detach().clone()

    out: dict[int, torch.Tensor] = {}
    times: dict[int, tuple[float, float]] = {}
    wanted = set(job["eval_steps"])
    adamw = torch.optim.AdamW

    class RecordingAdamW(adamw):  # the official loop builds its optimizer inside train()
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.updates = 0
            if 0 in wanted:
                with clock.paused():
                    out[0] = vectors()

        def step(self, *a, **k):
            result = super().step(*a, **k)
            self.updates += 1
            times[self.updates] = clock.elapsed()
            if self.updates in wanted:
                with clock.paused():
                    out[self.updates] = vectors()
            return result

    torch.optim.AdamW = RecordingAdamW
    frame = pd.DataFrame(job["train"])
    clock = TrainingClock()
    hs.train(frame, prefix_length=get_prefix_length(tok), positions="all",
             exclude_bos=True, world_size=1)
    torch.save({"vectors": out, "times": times}, job["out"])
    dist.destroy_process_group()


# ------------------------------------------------------------------------------ cost of the fix


def strip_official_additions(hs: HyperSteer) -> None:
    """Remove what the fix added to each cross-attention (post-norm, query RoPE, soft-capping:
    SDPA again), leaving the rest as it is: the other side of the cost measurement."""
    for xattn in hs.hypernet.cross_attentions:
        xattn.post_norm, xattn.rotary, xattn.softcap = torch.nn.Identity(), None, None


def step_cost(model_name: str = "tiny", batch_size: int = 12, reps: int = 10) -> dict:
    """Training-step time (forward, backward, AdamW; as the trainer runs it) of the current block
    against the same block without the additions, interleaved in one process."""
    import random

    tokenizer = build_tiny_tokenizer()
    model, hs = _common.build(model_name, tokenizer, backend="hook")
    bare = HyperSteer.from_base(model, tokenizer, hs.config, backend="hook")
    bare.hypernet.load_state_dict(hs.hypernet.state_dict())
    strip_official_additions(bare)
    batch = SteeringCollator(tokenizer)(random.Random(0).sample(_common.concept10()[1], batch_size))

    def step(h, opt):
        def run():
            loss = h(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
                     batch["hyper_attention_mask"], labels=batch["labels"],
                     context_mask=batch["context_mask"], return_logits=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    sides = {name: step(h, torch.optim.AdamW(h.hypernet.parameters(), lr=8e-5))
             for name, h in (("official_block", hs), ("without_additions", bare))}
    times = _common.interleaved(sides, reps)
    return {"ratio": _common.ratio(times, "official_block", "without_additions"),
            **{f"{k}_ms": _common.median_ms(v) for k, v in times.items()}}


# ------------------------------------------------------------------------------------- report


def curve(setup: Setup, vectors: dict[int, torch.Tensor]) -> dict[int, tuple[float, float]]:
    """{step: (held-out loss, mean vector norm)}."""
    return {s: (heldout_loss(setup, v), float(v.float().norm(dim=-1).mean()))
            for s, v in sorted(vectors.items())}


def removed_fraction(ours: dict, official: dict, unsteered: float) -> float:
    """Our held-out loss drop (from unsteered) at the last step over the official one."""
    last = max(official)
    return (unsteered - ours[last][0]) / (unsteered - official[last][0])


def time_to_loss(setup: Setup, official: Path, pythonpath: str | None, lr: float = 8e-5,
                 steps: int = 150, every: int = 10, plain: bool = False) -> dict:
    """Issues 16 and 24's figures for one seed. The official loop trains ``steps`` steps; its
    held-out loss there is the target. Both sides are evaluated every ``every`` steps (ours with
    its defaults, then the official loop, then, with ``plain``, ours with every option off); for
    each of our sides: its share of the official loss drop at every evaluated step, the first
    evaluated step at or below the target and its training time over the official ``steps``-step
    time (``None`` when ours never gets there within ``steps``), and CPU per step."""
    marks = list(range(0, steps + 1, every))
    unsteered = heldout_loss(setup, None)
    ours = {}
    official_times: dict[int, tuple[float, float]] = {}
    for side in ("defaults", "official") + (("plain",) if plain else ()):
        if side == "official":
            vectors = train_official(setup, lr, official, pythonpath, steps, eval_steps=marks,
                                     times=official_times)
            official_losses = {s: heldout_loss(setup, v) for s, v in sorted(vectors.items())}
            continue
        times: dict[int, tuple[float, float]] = {}
        vectors = train_ours(setup, lr, steps, eval_steps=marks,
                             train_config=PLAIN if side == "plain" else None, times=times)
        ours[side] = ({s: heldout_loss(setup, v) for s, v in sorted(vectors.items())}, times)
    target = official_losses[steps]
    base_cpu, base_wall = official_times[steps]
    result = {"seed": setup.seed, "target": target, "unsteered": unsteered,
              "official_losses": official_losses, "official_cpu": base_cpu,
              "official_wall": base_wall, "official_first_cpu": official_times[1][0],
              "steps": steps, "sides": {}}
    for side, (losses, times) in ours.items():
        hit = next((s for s, loss in losses.items() if s and loss <= target), None)
        cpu, wall = times[hit] if hit else (float("nan"), float("nan"))
        drop = {s: (unsteered - losses[s]) / (unsteered - official_losses[s])
                for s in marks if s and unsteered != official_losses[s]}
        result["sides"][side] = {"step": hit, "cpu": cpu, "wall": wall,
                                 "cpu_ratio": cpu / base_cpu, "wall_ratio": wall / base_wall,
                                 "losses": losses, "cpu_at_end": times[steps][0],
                                 "step_cpu_ratio": times[steps][0] / base_cpu,
                                 "drop_share": drop, "first_cpu": times[1][0]}
    return result


def _print_time_to_loss(r: dict) -> None:
    print(f"seed {r['seed']}: unsteered held-out loss {r['unsteered']:.2f}")
    curve_text = " ".join(f"{s}:{loss:.2f}" for s, loss in r["official_losses"].items())
    print(f"  official: held-out loss {curve_text}")
    print(f"  official: {r['steps']} steps, loss {r['target']:.2f} (the target), training "
          f"{r['official_cpu']:.1f} s CPU, {r['official_wall']:.1f} s wall (data preparation + "
          f"step 1: {r['official_first_cpu']:.1f} s CPU)")
    for side, v in r["sides"].items():
        losses = " ".join(f"{s}:{loss:.2f}" for s, loss in v["losses"].items())
        shares = " ".join(f"{s}:{share:.2f}" for s, share in v["drop_share"].items()
                          if s % 50 == 0 or s == r["steps"])
        late = min(50, r["steps"])  # early steps: both drops are tiny, their ratio noise
        print(f"  ours {side}: held-out loss {losses}")
        print(f"  ours {side}: share of the official drop {shares} (min over the evaluated "
              f"steps >= {late}: {min(x for s, x in v['drop_share'].items() if s >= late):.2f}); "
              f"CPU per step {v['step_cpu_ratio']:.2f} x official; data preparation + step 1 "
              f"{v['first_cpu']:.1f} s CPU")
        if v["step"] is None:
            print(f"    never <= {r['target']:.2f} within {r['steps']} steps "
                  f"({v['cpu_at_end']:.1f} s CPU for all of them)")
        else:
            print(f"    reaches {r['target']:.2f} at step {v['step']}: {v['cpu']:.1f} s CPU, "
                  f"{v['wall']:.1f} s wall; ours / official: CPU {v['cpu_ratio']:.2f}, "
                  f"wall {v['wall_ratio']:.2f}")
    print(f"  load {_common.load()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help=f"AxBench checkout at c01a22a (or ${OFFICIAL_ENV})")
    p.add_argument("--official-pythonpath", default=os.environ.get(OFFICIAL_PYTHONPATH_ENV),
                   help="put first on the official subprocess's path (transformers 4.45)")
    p.add_argument("--lr", type=float, nargs="+", default=[8e-5, 1e-3])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--ours-only", action="store_true")
    p.add_argument("--step-cost", action="store_true",
                   help="instead: time a training step with and without what the fix added")
    p.add_argument("--time-to-loss", action="store_true",
                   help="instead: training time to reach the official held-out loss, ours / "
                        "official (issue 16)")
    p.add_argument("--every", type=int, default=10,
                   help="--time-to-loss: evaluate both sides every this many steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[42],
                   help="--time-to-loss: one run per seed (data split and hypernetwork init)")
    p.add_argument("--plain", action="store_true",
                   help="--time-to-loss: also run ours with every throughput option off")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        _official_worker(args._worker, Path(args.official))
        return 0
    if args.step_cost:
        _common.quiet()
        torch.set_num_threads(args.threads)
        cost = step_cost(reps=args.reps)
        print(f"step_cost tiny batch 12: official block {cost['official_block_ms']:.0f} ms, "
              f"without post-norm/RoPE/soft-capping {cost['without_additions_ms']:.0f} ms, "
              f"ratio {cost['ratio']:.3f} (median of {args.reps} pairs, load {_common.load()})")
        return 0
    official = official_path(args.official)
    if official is None and not args.ours_only:
        print(f"fidelity_vs_official: skipped: no official HyperSteer checkout (--official or "
              f"${OFFICIAL_ENV}, AxBench fork at c01a22a)")
        return 0
    _common.quiet()
    torch.set_num_threads(args.threads)
    if args.time_to_loss:
        if official is None:
            raise SystemExit("--time-to-loss needs the official checkout (--official)")
        for seed in args.seeds:
            _print_time_to_loss(time_to_loss(build_setup(n_train=args.steps * 4, seed=seed),
                                             official, args.official_pythonpath, args.lr[0],
                                             args.steps, args.every, args.plain))
        return 0
    setup = build_setup(n_train=args.steps * 4)
    unsteered = heldout_loss(setup, None)
    print(f"unsteered held-out loss {unsteered:.2f}")
    for lr in args.lr:
        sides = {"ours": curve(setup, train_ours(setup, lr, args.steps))}
        if not args.ours_only:
            sides["official"] = curve(setup, train_official(
                setup, lr, official, args.official_pythonpath, args.steps))
        for name, c in sides.items():
            losses = " ".join(f"{s}:{loss:.2f}" for s, (loss, _) in c.items())
            print(f"lr {lr:g} {name:8s} loss {losses} | norm@0 {c[0][1]:.1f} "
                  f"norm@{args.steps} {c[args.steps][1]:.1f}")
        if "official" in sides:
            frac = removed_fraction(sides["ours"], sides["official"], unsteered)
            print(f"lr {lr:g} ours removes {100 * frac:.0f}% of the official held-out loss drop "
                  f"(load {_common.load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
