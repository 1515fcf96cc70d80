"""``hypersteer serve``: an OpenAI-compatible chat server steered by a sentence per request.

    hypersteer serve --hypernet DUMP/train/<Method> [--model NAME_OR_DIR] [--host 127.0.0.1]
                     [--port 8000] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .app import Limits, create_app
from .engine import Engine
from .loading import load_hypersteer, trained_concepts

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypersteer serve", description=__doc__.split("\n")[0])
    p.add_argument("--hypernet", required=True, help="a trained DUMP/train/<Method> directory")
    p.add_argument("--model", default=None,
                   help="base model name or directory (default: the one it was trained on)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", "--api_key", dest="api_key",
                   default=os.environ.get("HYPERSTEER_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (or HYPERSTEER_API_KEY)")
    p.add_argument("--served_model_name", default=None,
                   help="the model id clients send (default: the method name, e.g. HyperSteerXAttn)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--max_batch", type=int, default=32, help="rows decoded together")
    p.add_argument("--max_queue", type=int, default=256, help="waiting requests before 429")
    p.add_argument("--max_tokens", type=int, default=1024, help="per-request completion limit")
    p.add_argument("--max_prompt_tokens", type=int, default=2048)
    return p


def build_server(hypernet: str | Path, model: str | None = None, device: str | None = None,
                 served_model_name: str | None = None, api_key: str | None = None,
                 max_batch: int = 32, max_queue: int = 256, max_tokens: int = 1024,
                 max_prompt_tokens: int = 2048):
    """(FastAPI app, engine) for a trained hypernetwork; the caller runs and closes them."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hs = load_hypersteer(hypernet, model, device=device)
    engine = Engine(hs, max_prompt_tokens=max_prompt_tokens, max_batch=max_batch,
                    max_queue=max_queue)
    limits = Limits(max_tokens=max_tokens, default_max_tokens=min(128, max_tokens))
    app = create_app(engine, served_model_name or Path(hypernet).resolve().name,
                     api_key=api_key, limits=limits, examples=trained_concepts(hypernet))
    return app, engine


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    app, engine = build_server(args.hypernet, args.model, args.device, args.served_model_name,
                                  args.api_key, args.max_batch, args.max_queue, args.max_tokens,
                                  args.max_prompt_tokens)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        logger.warning("serving on %s without --api-key: anyone who can reach it can use it",
                       args.host)
    print(f"[serve] {app.title} on http://{args.host}:{args.port}/  (playground at /, "
          f"API at /v1/chat/completions)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
    return 0
