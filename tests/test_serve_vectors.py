"""`hypersteer vectors`: safetensors with metadata, and llama.cpp control vectors (gguf)."""

from __future__ import annotations

import json

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the serve extra is not installed (pip install -e .[serve])")

from axbench_hypersteer import cli  # noqa: E402
from axbench_hypersteer.model.fileio import load_tensors  # noqa: E402
from axbench_hypersteer.serve.loading import load_hypersteer  # noqa: E402
from serve_helpers import CONCEPTS, write_hypernet  # noqa: E402


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("vectors")
    return {v: write_hypernet(root / v, tokenizer, v) for v in ("nocontext", "xattn")}


def test_safetensors_holds_one_vector_per_prompt_with_metadata(dumps, tmp_path):
    out = tmp_path / "v.safetensors"
    assert cli.main(["vectors", "--hypernet", str(dumps["nocontext"]),
                     "--steering_prompt", *CONCEPTS[:2], "--out", str(out)]) == 0
    tensors = load_tensors(out)
    hs = load_hypersteer(dumps["nocontext"], device="cpu")
    expected = hs.steering_vectors(CONCEPTS[:2]).detach()
    assert sorted(tensors) == ["vector.0", "vector.1"]
    torch.testing.assert_close(torch.stack([tensors["vector.0"], tensors["vector.1"]]), expected)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["layer"] == "2" and meta["variant"] == "nocontext"
    assert meta["prompt_independent"] == "true" and meta["hidden_size"] == "64"
    assert json.loads(meta["steering_prompts"]) == CONCEPTS[:2]
    assert meta["model"].endswith("base_model")


def test_gguf_control_vector_per_prompt(dumps, tmp_path):
    out = tmp_path / "cv.gguf"
    base = "Write a poem."
    assert cli.main(["vectors", "--hypernet", str(dumps["xattn"]), "--steering_prompt",
                     *CONCEPTS[:2], "--base_prompt", base, "--out", str(out),
                     "--format", "gguf"]) == 0
    hs = load_hypersteer(dumps["xattn"], device="cpu")
    expected = hs.steering_vectors(CONCEPTS[:2], base_prompts=[base, base]).detach()
    for i in range(2):
        reader = gguf.GGUFReader(str(tmp_path / f"cv.{i}.gguf"))
        fields = {name: f.contents() for name, f in reader.fields.items()
                  if name.startswith(("general.architecture", "controlvector."))}
        assert fields == {"general.architecture": "controlvector",
                          "controlvector.model_hint": "gemma2", "controlvector.layer_count": 1}
        [tensor] = reader.tensors
        assert tensor.name == "direction.2"
        torch.testing.assert_close(torch.from_numpy(tensor.data.copy()).reshape(-1), expected[i])


def test_context_variants_need_a_base_prompt(dumps, tmp_path, capsys):
    code = cli.main(["vectors", "--hypernet", str(dumps["xattn"]), "--steering_prompt", "x",
                     "--out", str(tmp_path / "v.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--base_prompt" in err[0]
    assert not (tmp_path / "v.safetensors").exists()


def test_serve_without_a_trained_hypernet_is_one_line(tmp_path, capsys):
    assert cli.main(["serve", "--hypernet", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained hypernetwork" in err[0]
