"""``hypersteer vectors``: steering vectors as files, for engines that serve fixed vectors.

    hypersteer vectors --hypernet DUMP/train/<Method> --steering_prompt S [S ...]
                       [--base_prompt B [B ...]] --out FILE [--format safetensors|gguf]

safetensors: one ``[d_model]`` fp32 tensor per steering prompt (``vector.0``, ``vector.1``, ...)
and metadata naming the layer, base model, variant and prompts. gguf: a llama.cpp control
vector per prompt (``FILE``, or ``FILE`` with ``.0``, ``.1``... before the suffix for several),
arch ``controlvector``, one tensor ``direction.<layer>``: llama.cpp adds ``direction.<l>`` to the
output of (0-based) block l, which is exactly where HyperSteer adds its vector. The factor is
not baked in: scale at load time (llama.cpp ``--control-vector-scaled FILE FACTOR``).

Only the no-context variant's vector is a function of the steering prompt alone; in-context
and cross-attention vectors also depend on the base prompt, so a file holds the vector for the
given ``--base_prompt`` and is exact for that prompt only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .. import __version__
from ..model.errors import ConfigError
from ..model.fileio import atomic_write, save_tensors
from ..model.hypersteer import HyperSteer
from .loading import load_hypersteer, trained_base_name


def compute(hs: HyperSteer, steering_prompts: list[str],
            base_prompts: list[str] | None) -> torch.Tensor:
    """[N, d_model] fp32 vectors, one per steering prompt."""
    variant = hs.config.variant
    if variant != "nocontext":
        if not base_prompts:
            raise ConfigError(f"the {variant} variant's vectors depend on the base prompt: give "
                              "--base_prompt (one for all, or one per steering prompt)")
        if len(base_prompts) == 1:
            base_prompts = base_prompts * len(steering_prompts)
        if len(base_prompts) != len(steering_prompts):
            raise ConfigError(f"{len(steering_prompts)} steering prompts but "
                              f"{len(base_prompts)} base prompts: give one, or one each")
    elif base_prompts:
        raise ConfigError("the nocontext variant ignores the base prompt: drop --base_prompt")
    with torch.no_grad():
        return hs.steering_vectors(steering_prompts, base_prompts).float().cpu()


def metadata(hs: HyperSteer, model_name: str, steering_prompts: list[str],
             base_prompts: list[str] | None) -> dict[str, str]:
    return {"format": "hypersteer-vectors", "package_version": __version__,
            "model": model_name, "model_type": hs.base_model.config.model_type,
            "hidden_size": str(hs.base_model.config.hidden_size),
            "layer": str(hs.config.steering_layer), "site": "output of decoder block <layer>",
            "variant": hs.config.variant,
            "prompt_independent": str(hs.config.variant == "nocontext").lower(),
            "steering_prompts": json.dumps(steering_prompts),
            "base_prompts": json.dumps(base_prompts or [])}


def write_safetensors(out: Path, vectors: torch.Tensor, meta: dict[str, str]) -> list[Path]:
    return [save_tensors(out, {f"vector.{i}": v for i, v in enumerate(vectors)}, metadata=meta)]


def write_gguf(out: Path, vectors: torch.Tensor, meta: dict[str, str]) -> list[Path]:
    import gguf

    layer = int(meta["layer"])
    if layer == 0:
        raise ConfigError("llama.cpp control vectors cannot steer block 0's output "
                          "(direction.0 is never loaded); use --format safetensors")
    paths = [out] if len(vectors) == 1 else [out.with_suffix(f".{i}{out.suffix}")
                                             for i in range(len(vectors))]
    for path, vector in zip(paths, vectors):
        def write(tmp: Path, vector=vector) -> None:
            writer = gguf.GGUFWriter(str(tmp), "controlvector")
            writer.add_string("controlvector.model_hint", meta["model_type"])
            writer.add_uint32("controlvector.layer_count", 1)
            writer.add_tensor(f"direction.{layer}", vector.numpy())
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        atomic_write(path, write)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hypersteer vectors", description=__doc__.split("\n")[0])
    p.add_argument("--hypernet", required=True, help="a trained DUMP/train/<Method> directory")
    p.add_argument("--model", default=None, help="base model (default: the one it trained on)")
    p.add_argument("--steering_prompt", nargs="+", required=True)
    p.add_argument("--base_prompt", nargs="+", default=None,
                   help="in-context / cross-attention variants: the prompt the vector is for")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("safetensors", "gguf"), default="safetensors")
    args = p.parse_args(argv)
    model_name = args.model or trained_base_name(Path(args.hypernet))
    hs = load_hypersteer(args.hypernet, model_name, device="cpu")
    vectors = compute(hs, args.steering_prompt, args.base_prompt)
    meta = metadata(hs, model_name, args.steering_prompt, args.base_prompt)
    write = write_gguf if args.format == "gguf" else write_safetensors
    for path in write(Path(args.out), vectors, meta):
        print(f"[vectors] wrote {path}")
    return 0
