"""Peak host memory (RSS) of building the 22-block cross-attention hypernetwork of a random
Gemma-2-2B-size base (bf16 base, ``dtype: bfloat16`` hypernetwork, CPU), as ``hypersteer train``
builds it: base first, then ``HyperSteer.from_base``.

    python benchmarks/meta_init_rss.py                       # this checkout
    python benchmarks/meta_init_rss.py --package /tmp/before  # another checkout (same layout)

Each run is one fresh process (peak RSS only grows). Prints one line: RSS after the base, peak
RSS after the hypernetwork, the difference, and the bf16 size of the hypernetwork for scale.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", default=None,
                        help="checkout whose axbench_hypersteer to build with (default: this one)")
    parser.add_argument("--blocks", type=int, default=22)
    args = parser.parse_args()
    if args.package:
        sys.path.insert(0, os.path.abspath(args.package))
        import axbench_hypersteer  # noqa: F401  (first: _common puts this checkout on the path)
    import torch

    from _common import HyperSteer, HyperSteerConfig, building_on, gemma2_2b_config, load, quiet
    import axbench_hypersteer

    quiet()
    from transformers import Gemma2ForCausalLM

    with building_on("cpu", torch.bfloat16):  # as load_base(dtype=bfloat16) would leave it
        torch.manual_seed(0)
        base = Gemma2ForCausalLM(gemma2_2b_config()).eval()
    after_base = rss_gb()
    # Built as train_stage builds it: default dtype fp32, the config asks for bf16.
    hs = HyperSteer.from_base(base, None, HyperSteerConfig(
        variant="xattn", steering_layer=20, num_blocks=args.blocks, cross_attention_heads=8,
        dtype="bfloat16"), backend="hook")
    peak = rss_gb()
    size = sum(p.numel() * p.element_size() for p in hs.hypernet.parameters()) / 2**30
    print(f"meta_init_rss: package {os.path.dirname(axbench_hypersteer.__file__)}: "
          f"RSS after base {after_base:.2f} GB, peak after hypernetwork {peak:.2f} GB, "
          f"hypernetwork build +{peak - after_base:.2f} GB (its bf16 weights: {size:.2f} GB); "
          f"load {load()}")


if __name__ == "__main__":
    main()
