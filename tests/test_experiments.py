"""The paper experiments at tiny scale: every command runs on CPU with the tiny Gemma-2 and a
Concept10 subset, and writes its table and PNGs; plus the ablation grid's single source of truth."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from axbench_hypersteer.model.collate import SteeringCollator
from axbench_hypersteer.model.tokens import format_prompt
from axbench_hypersteer.model.config import ConfigError, HyperSteerConfig
from axbench_hypersteer.model.errors import DataError
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.experiments import EXPERIMENTS
from axbench_hypersteer.experiments import __main__ as experiments_cli
from axbench_hypersteer.experiments import ablations as abl
from axbench_hypersteer.experiments.attention import run_attention
from axbench_hypersteer.experiments.common import (example_losses, nested_subsets, parse_sizes,
                                                   png_size, prepare_splits,
                                                   write_concept_subset)
from axbench_hypersteer.experiments.geometry import run_geometry
from axbench_hypersteer.experiments.hf_data import hf_to_axbench
from axbench_hypersteer.experiments.projection import (block_means, cosine_matrix, pca_2d,
                                                       tsne_2d)
from axbench_hypersteer.experiments.scaling import run_scaling
from axbench_hypersteer.stages.data import load_metadata, load_train_frame
from axbench_hypersteer.stages.run_config import load_run_config
from axbench_hypersteer.testing.tiny import build_tiny_gemma2, save_tiny

REPO = Path(__file__).resolve().parents[1]
LAYER = 2
METHODS = ["HyperSteerNoContext", "HyperSteerXAttn"]


@pytest.fixture(scope="module")
def base(tokenizer, tmp_path_factory):
    """The tiny Gemma-2 (4 blocks), saved so configs can name it; returns (dir, (model, tok))."""
    model = build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0)
    path = save_tiny(model, tokenizer, tmp_path_factory.mktemp("tiny_base"))
    return path, (model, tokenizer)


@pytest.fixture(scope="module")
def c10(concept10_dir, tmp_path_factory):
    """Concept10, cut to short prompts and answers (8 positives per concept) so a CPU step is
    fast; still AxBench's files and schema."""
    src = Path(concept10_dir) / "generate"
    frame = pd.read_parquet(src / "train_data.parquet")
    frame = frame[frame["input"].str.len() <= 120].copy()
    frame["output"] = frame["output"].str.slice(0, 160)
    frame = pd.concat([frame[frame.concept_id == -1].head(4),
                       frame[frame.concept_id != -1].groupby("concept_id").head(8)])
    out = tmp_path_factory.mktemp("concept10_small")
    (out / "generate").mkdir()
    frame.to_parquet(out / "generate" / "train_data.parquet", index=False)
    shutil.copy(src / "metadata.jsonl", out / "generate" / "metadata.jsonl")
    return out


def write_config(path: Path, model_dir: Path, methods=METHODS, **train_overrides) -> Path:
    common = {"batch_size": 4, "n_epochs": 1, "lr": 1e-3, "num_blocks": 2, "max_length": 128,
              "max_steps": 2, "dev_examples": 0, **train_overrides}
    models = {m: dict(common, **({"cross_attention_heads": 4} if m == "HyperSteerXAttn" else {}))
              for m in methods}
    config = {
        "train": {"model_name": str(model_dir), "layer": LAYER, "seed": 42, "models": models},
        "inference": {"models": list(methods), "steering_factors": [0.0, 1.0],
                      "steering_num_of_examples": 2, "steering_batch_size": 8,
                      "steering_output_length": 3, "temperature": 0.0},
        "evaluate": {"models": list(methods), "winrate_split_ratio": 0.5},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) >= min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    width, height = png_size(path)
    assert width >= 300 and height >= 200


def labelled_lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()
            if not line.get_label().startswith("_")}


# ----------------------------------------------------------------------------- grid / lr rule


def test_lr_rule_values_are_exact():
    expected = {2: 8e-5 * math.sqrt(10.0), 4: 8e-5 * math.sqrt(5.0),
                8: 8e-5 * math.sqrt(2.5), 20: 8e-5}
    for n, lr in expected.items():
        assert abl.lr_for_blocks(n) == lr
    assert abl.lr_for_blocks(2) == pytest.approx(2.5298221281347e-4, rel=1e-12)
    assert abl.lr_for_blocks(20) == 8e-5
    assert abl.lr_for_blocks(4, base_lr=1e-3) == pytest.approx(1e-3 * math.sqrt(5.0), rel=1e-15)
    with pytest.raises(ConfigError):
        abl.lr_for_blocks(0)


def test_committed_ablation_configs_equal_generated_ones(tmp_path):
    committed_dir = REPO / "sweep_configs" / "ablations"
    generated = abl.generated_configs()
    committed = {p.name: p.read_text() for p in committed_dir.glob("*.yaml")}
    assert sorted(committed) == sorted(generated), "sweep_configs/ablations is out of date: run " \
        "python -m axbench_hypersteer.experiments ablations --write-configs"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} differs from the generator's output"
    # The CLI writes the same files.
    assert experiments_cli.main(["ablations", "--write-configs", "--out_dir", str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.glob("*.yaml")} == generated

    seen_blocks, seen = set(), set()
    for path in sorted(committed_dir.glob("*.yaml")):
        run = load_run_config(path)  # every file is a valid run config
        spec = run.method()
        n = spec.model.num_blocks
        assert spec.train.lr == abl.lr_for_blocks(n) == 8e-5 * math.sqrt(20 / n)
        assert (run.model_name, run.layer, spec.train.n_epochs) == ("google/gemma-2-2b-it", 20, 1)
        assert spec.train.batch_size == (12 if spec.model.variant == "xattn" else 6)
        seen.add((spec.model.variant, spec.model.init, spec.train.objective))
        if spec.model.variant == "xattn" and spec.model.init == "pretrained":
            seen_blocks.add(n)
    assert seen_blocks == {2, 4, 8, 20}
    assert {("xattn", "random", "lm"), ("nocontext", "pretrained", "reconstruction"),
            ("nocontext", "pretrained", "lm"), ("incontext", "pretrained", "lm")} <= seen
    assert {r[2] for r in abl.ROWS} == {r.name for r in abl.RUNS}


# ----------------------------------------------------------------------------- pieces


def test_nested_subsets_are_nested_and_seeded():
    ids = list(range(100, 130))
    subsets = nested_subsets(ids, parse_sizes("5,10,all,50,10"), seed=3)
    assert [n for n, _ in subsets] == [5, 10, 30]
    for (_, small), (_, big) in zip(subsets, subsets[1:]):
        assert set(small) < set(big)
    assert subsets[-1][1] == ids
    assert nested_subsets(ids, [5], seed=3) == subsets[:1]
    assert nested_subsets(ids, [5], seed=4) != subsets[:1]
    with pytest.raises(ConfigError):
        parse_sizes("10,zero")


def test_heldout_dump_concepts_are_removed_from_training(c10, tmp_path):
    """--heldout_data_dir: training concepts with the same (normalised) text leave the pool."""
    heldout_dir = write_concept_subset(c10 / "generate", [3, 8], tmp_path / "heldout")
    splits = prepare_splits(c10, tmp_path / "exp", heldout_data_dir=heldout_dir,
                            heldin_concepts=2, eval_examples=3, seed=1)
    assert splits.summary["removed_overlap"] == [3, 8]
    assert sorted(splits.pool_concepts()) == [0, 1, 2, 4, 5, 6, 7, 9]
    pool = pd.read_parquet(splits.pool_dir / "generate" / "train_data.parquet")
    assert not {3, 8} & set(pool.concept_id) and (pool.concept_id == -1).any()
    assert sorted(splits.heldout.concept_id.unique()) == [3, 8]
    assert splits.heldout.groupby("concept_id").size().tolist() == [3, 3]
    assert splits.heldin.concept_id.nunique() == 2 and len(splits.heldin) == 6
    assert [m["concept_id"] for m in load_metadata(splits.heldout_metadata)] == [3, 8]
    again = prepare_splits(c10, tmp_path / "exp", heldout_data_dir=heldout_dir,
                           heldin_concepts=2, eval_examples=3, seed=1)  # reused as is
    pd.testing.assert_frame_equal(again.heldin, splits.heldin)
    with pytest.raises(ConfigError):  # the same out_dir with other settings
        prepare_splits(c10, tmp_path / "exp", heldout_concepts=2, seed=1)


def test_example_losses_match_the_steered_forward_loss(tiny_model, tokenizer):
    hs = HyperSteer.from_base(tiny_model, tokenizer, HyperSteerConfig(
        variant="xattn", steering_layer=LAYER, num_blocks=2, cross_attention_heads=4))
    frame = pd.DataFrame({
        "concept_id": [0, 0, 1], "concept": ["the ocean", "the ocean", "legal terms"],
        "input": ["Write a poem.", "Tell me a story about a long day.", "Explain recursion."],
        "output": ["Waves and tides under the sea.", "Coral reefs, whales and dolphins.",
                   "The court rules on the statute."]})
    for factor in (1.0, 0.0):
        losses = example_losses(hs, frame, batch_size=3, max_length=96, factor=factor)
        batch = SteeringCollator(tokenizer, 96)(frame.to_dict("records"))
        with torch.no_grad():
            out = hs(batch["input_ids"], batch["attention_mask"], batch["hyper_input_ids"],
                     batch["hyper_attention_mask"], labels=batch["labels"],
                     context_mask=batch["context_mask"], factors=torch.full((3,), factor))
        token_mean = (losses.loss * losses.n_tokens).sum() / losses.n_tokens.sum()
        assert token_mean == pytest.approx(out.loss.item(), rel=1e-5)
        assert list(losses.concept_id) == [0, 0, 1]
    with torch.no_grad():  # factor 0 is the unsteered model
        plain = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"]).loss
    assert token_mean == pytest.approx(plain.item(), rel=1e-5)


def test_pca_and_tsne_separate_clusters():
    rng = np.random.RandomState(0)
    centers = rng.randn(3, 40) * 10
    x = np.concatenate([c + rng.randn(12, 40) for c in centers])
    labels = np.repeat([0, 1, 2], 12)
    for coords in (pca_2d(x)[0], tsne_2d(x, perplexity=8, n_iter=400, seed=0)):
        assert coords.shape == (36, 2) and np.isfinite(coords).all()
        d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        assert (labels[d.argmin(1)] == labels).all()  # nearest neighbour is in the same cluster
    np.testing.assert_array_equal(tsne_2d(x, 8, 50, seed=1), tsne_2d(x, 8, 50, seed=1))
    blocks, order = block_means(cosine_matrix(x), labels)
    assert order == [0, 1, 2] and blocks.shape == (3, 3)
    assert np.diag(blocks).min() > blocks[~np.eye(3, dtype=bool)].max()


# ----------------------------------------------------------------------------- experiments


def test_scaling_trains_nested_subsets_and_plots_one_curve_per_method(base, c10, tmp_path):
    model_dir, loaded = base
    config = write_config(tmp_path / "scaling.yaml", model_dir)
    out = tmp_path / "scaling"
    result = run_scaling(config, c10, out, sizes="2,4,all", heldout_concepts=3, eval_examples=2,
                         judge="offline", judge_concepts=2, base=loaded)
    table = result.table
    assert sorted(table.method.unique()) == sorted(METHODS)
    assert sorted(table.n_concepts.unique()) == [2, 4, 7]
    assert (table.heldout_concepts == 3).all() and (table.heldout_examples == 6).all()
    assert np.isfinite(table[["heldout_loss_mean", "unsteered_loss_mean", "judge_mean"]]).all().all()
    assert (table.judge_concepts == 2).all()

    heldout = set(pd.read_parquet(out / "splits" / "heldout.parquet").concept_id)
    trained = [{m["concept_id"] for m in load_metadata(out / "runs" / f"n{n:05d}" / "train" /
                                                       "metadata.jsonl")} for n in (2, 4, 7)]
    assert [len(t) for t in trained] == [2, 4, 7]
    assert trained[0] < trained[1] < trained[2]
    assert not trained[2] & heldout and len(heldout) == 3

    for name in ("scaling.csv", "scaling.md"):
        assert (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "scaling.csv")) == 6
    assert_png(out / "scaling.png")
    loss_ax, judge_ax = result.figure.axes[:2]
    lines = labelled_lines(loss_ax)
    assert set(lines) == set(METHODS) | {"unsteered"}
    for method in METHODS:
        np.testing.assert_array_equal(lines[method].get_xdata(), [2, 4, 7])
        assert len(labelled_lines(judge_ax)[method].get_xdata()) == 3
    assert loss_ax.get_xscale() == "log"

    # Re-running reuses every trained run and gives the same numbers.
    again = run_scaling(config, c10, out, sizes="2,4,all", heldout_concepts=3, eval_examples=2,
                        base=loaded)
    np.testing.assert_allclose(again.table.heldout_loss_mean, table.heldout_loss_mean)
    with pytest.raises(ConfigError):
        run_scaling(config, c10, out, sizes="2", heldout_concepts=4, base=loaded)


def test_ablations_run_the_grid_with_clipped_blocks_and_write_one_table(base, c10, tmp_path):
    model_dir, loaded = base
    config = write_config(tmp_path / "base.yaml", model_dir, methods=["HyperSteerXAttn"])
    out = tmp_path / "ablations"
    result = abl.run_ablations(config, c10, out, heldout_concepts=3, heldin_concepts=3,
                               eval_examples=1, base=loaded)
    # The grid was derived from the base through the one generator.
    written = {p.name: p.read_text() for p in (out / "configs").glob("*.yaml")}
    assert written == abl.generated_configs(abl.base_from_yaml(config))

    table = result.table.drop_duplicates("run").set_index("run", drop=False)
    assert list(result.table.ablation) == [r[1] for r in abl.ROWS]
    # N clipped to the tiny model's 4 blocks, lr following the rule for the clipped N.
    assert table.loc["xattn_n2", "num_blocks"] == 2
    assert table.loc["xattn_n2", "lr"] == pytest.approx(1e-3 * math.sqrt(20 / 2), rel=1e-12)
    for run in ("xattn_n8", "xattn_n20", "xattn_random_n20", "incontext_n20"):
        assert table.loc[run, "num_blocks"] == 4
        assert table.loc[run, "lr"] == pytest.approx(1e-3 * math.sqrt(20 / 4), rel=1e-12)
    assert table.loc["xattn_n20", "num_blocks_config"] == 20
    assert table.loc["xattn_n8", "trained_as"] == table.loc["xattn_n20", "trained_as"] \
        == table.loc["xattn_n4", "trained_as"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        {"xattn_random_n20", "xattn_n2", "nocontext_reconstruction_n20", "nocontext_lm_n20",
         "incontext_n20", table.loc["xattn_n4", "trained_as"]})
    assert table.loc["nocontext_reconstruction_n20", "objective"] == "reconstruction"
    log = (out / "runs" / "nocontext_reconstruction_n20" / "train" / "HyperSteerNoContext" /
           "train_log.jsonl").read_text()
    assert "reconstruction_loss" in log
    assert np.isfinite(result.table[["heldin_loss_mean", "heldout_loss_mean"]]).all().all()
    assert (result.table.paper_heldout_judge.dropna() > 0).all()

    # DiffMean stand-in targets: one row per concept id, held-out concepts left at zero.
    from axbench_hypersteer.model.fileio import load_tensors
    targets = load_tensors(out / "targets" / f"diffmean_l{LAYER}.safetensors")["weight"]
    heldout = set(pd.read_parquet(out / "splits" / "heldout.parquet").concept_id)
    trained_ids = set(range(10)) - heldout
    assert targets.shape == (max(trained_ids) + 1, 64)
    assert all(targets[c].abs().sum() == 0 for c in heldout if c < targets.shape[0])
    assert all(targets[c].abs().sum() > 0 for c in trained_ids)
    # Held-in examples and held-out concepts never reach the training pool.
    pool = pd.read_parquet(out / "splits" / "pool" / "generate" / "train_data.parquet")
    heldin = pd.read_parquet(out / "splits" / "heldin.parquet")
    assert not set(pool.concept_id) & heldout
    assert not set(zip(pool.input, pool.output)) & set(zip(heldin.input, heldin.output))
    assert len(heldin) == 3 and heldin.concept_id.nunique() == 3

    md = (out / "ablations.md").read_text()
    assert "4 (config 20)" in md and "Reconstruction loss" in md
    assert len(pd.read_csv(out / "ablations.csv")) == len(abl.ROWS)
    assert_png(out / "ablations.png")
    ax = result.figure.axes[0]
    from matplotlib.container import BarContainer
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["held-in loss", "held-out loss"]
    assert all(len(c.patches) == len(abl.ROWS) for c in bars)  # one bar per table row
    assert [t.get_text() for t in ax.get_yticklabels()][1] == "Cross-attention: Pretrained"


@pytest.fixture(scope="module")
def geometry_run(base, c10, tmp_path_factory):
    """Geometry with fresh training of both variants (the dump the attention tests reuse)."""
    model_dir, loaded = base
    tmp = tmp_path_factory.mktemp("geometry")
    config = write_config(tmp / "geometry.yaml", model_dir)
    result = run_geometry(config, tmp / "out", data_dir=c10, max_concepts=4,
                          prompts_per_concept=5, perplexity=5, tsne_iters=300, base=loaded)
    return config, tmp / "out", result


def test_geometry_projects_and_compares_vectors_per_concept(geometry_run, base, tmp_path):
    config, out, result = geometry_run
    assert list(result.vectors) == ["HyperSteerXAttn", "HyperSteerNoContext"]
    assert len(result.index) == 20 and result.index.concept_id.nunique() == 4
    for name in ("pca.png", "tsne.png", "cosine.png"):
        assert_png(out / name)
    assert (out / "geometry.md").stat().st_size > 0 and len(pd.read_csv(out / "geometry.csv")) == 2
    for fig in (result.figures["pca"], result.figures["tsne"]):
        assert len(fig.axes) == 2  # one panel per method
        for ax in fig.axes:
            collections = ax.collections
            assert len(collections) == 4  # one scatter per concept ...
            assert [len(c.get_offsets()) for c in collections] == [5] * 4  # ... 5 prompts each
    images = [im for ax in result.figures["cosine"].axes for im in ax.images]
    assert len(images) == 2 and all(im.get_array().shape == (4, 4) for im in images)

    table = result.table.set_index("method")
    # No-context vectors ignore the base prompt; cross-attention ones depend on it.
    assert table.loc["HyperSteerNoContext", "within_concept_cosine"] == pytest.approx(1.0)
    nc = result.vectors["HyperSteerNoContext"].reshape(4, 5, -1)
    assert np.allclose(nc, nc[:, :1])
    xa = result.vectors["HyperSteerXAttn"].reshape(4, 5, -1)
    assert np.abs(xa - xa[:, :1]).max() > 0
    assert (table.within_concept_cosine >= table.between_concept_cosine).all()

    # The "trained dumps" path: loading from --dump gives the same vectors without training,
    # also for a method the config does not list (its checkpoint holds its settings).
    model_dir, loaded = base
    only_xattn = write_config(tmp_path / "xattn.yaml", model_dir, methods=["HyperSteerXAttn"])
    again = run_geometry(only_xattn, tmp_path / "again", dumps={"hypersteer_xattn": out,
                                                                "HyperSteerNoContext": out},
                         concepts_path=out / "train" / "metadata.jsonl", max_concepts=4,
                         prompts_per_concept=5, perplexity=5, tsne_iters=50, base=loaded)
    assert not (tmp_path / "again" / "train").exists()
    for method, vecs in result.vectors.items():
        np.testing.assert_allclose(again.vectors[method], vecs, rtol=1e-5, atol=1e-6)


def test_attention_grid_has_one_map_per_block_and_head_with_token_labels(geometry_run, base,
                                                                        tmp_path):
    config, dump, _ = geometry_run
    _, (model, tokenizer) = base
    result = run_attention(config, tmp_path / "att", dump_dir=dump,
                           steering_prompt="references to rental services",
                           base_prompt="Write a short note.", base=(model, tokenizer))
    assert result.layers == [0, 1] and result.heads == [0, 1, 2, 3]
    key_ids = tokenizer(format_prompt(tokenizer, "Write a short note."))["input_ids"]
    assert len(result.key_tokens) == len(key_ids) and result.key_tokens[0] == "<bos>"
    assert result.query_tokens[0] == "<bos>" and len(result.query_tokens) > 2
    for m in result.maps:  # probabilities over the base tokens
        assert m.shape == (4, len(result.query_tokens), len(result.key_tokens))
        np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-5)
    axes = result.figure.axes[:-1]  # the last axes is the colour bar
    assert len(axes) == 8 and all(len(ax.images) == 1 for ax in axes)
    assert axes[0].images[0].get_array().shape == (len(result.query_tokens),
                                                  len(result.key_tokens))
    assert [t.get_text() for t in axes[0].get_yticklabels()] == result.query_tokens
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == result.key_tokens
    assert_png(result.paths["png"])
    saved = json.loads(result.paths["json"].read_text())
    assert saved["key_tokens"] == result.key_tokens

    # The command line (loads the base model from the config's directory), one block, 2 heads.
    rc = experiments_cli.main(["attention", "--config", str(config), "--dump_dir", str(dump),
                               "--out_dir", str(tmp_path / "cli"), "--layers", "1",
                               "--heads", "0,3"])
    assert rc == 0
    assert_png(tmp_path / "cli" / "attention.png", min_bytes=2_000)
    assert json.loads((tmp_path / "cli" / "attention.json").read_text())["layers"] == [1]
    # A no-context method has no cross-attention; a bad layer is a user error (exit 2).
    with pytest.raises(ConfigError):
        run_attention(config, tmp_path / "x", dump_dir=dump, method="HyperSteerNoContext",
                      base=(model, tokenizer))
    assert experiments_cli.main(["attention", "--config", str(config), "--dump_dir", str(dump),
                                 "--out_dir", str(tmp_path / "bad"), "--layers", "7"]) == 2


def test_cli_lists_experiments_and_rejects_unknown_ones(capsys):
    assert experiments_cli.main([]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in EXPERIMENTS)
    assert experiments_cli.main(["nope"]) == 2


def test_hf_parquet_becomes_an_axbench_dump(concept10_dir, tmp_path):
    """HF ships data.parquet without metadata.jsonl: rebuilt metadata matches AxBench's own."""
    src = Path(concept10_dir) / "generate"
    hf_file = tmp_path / "hf" / "2b" / "l20" / "train" / "data.parquet"
    hf_file.parent.mkdir(parents=True)
    shutil.copy(src / "train_data.parquet", hf_file)
    out = hf_to_axbench([hf_file], tmp_path / "dump")
    rebuilt = load_metadata(out / "generate" / "metadata.jsonl")
    original = load_metadata(src / "metadata.jsonl")
    assert [(m["concept_id"], m["concept"]) for m in rebuilt] == \
        [(m["concept_id"], m["concept"]) for m in original]
    assert len(load_train_frame(out, seed=None)) == 720
    # A metadata file that disagrees with the rows is refused.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({**m, "concept": m["concept"] + " (other)"}) + "\n"
                           for m in original))
    with pytest.raises(DataError):
        hf_to_axbench([hf_file], tmp_path / "bad_dump", bad)
