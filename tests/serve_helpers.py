"""A trained-layout hypernetwork directory on a tiny random base, and the server running on
127.0.0.1 in a thread (real sockets, real uvicorn), for the serving tests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from axbench_hypersteer.testing.tiny import build_tiny_gemma2, save_tiny
from helpers import make_hs

CONCEPTS = ["references to legal terminology", "the ocean and sea creatures",
            "cats and kittens"]


def write_hypernet(root: Path, tokenizer, variant: str = "xattn") -> Path:
    """DUMP/train/<Method> as ``hypersteer train`` leaves it (random hypernetwork weights), with
    the base model saved beside it and named in train/config.json."""
    model = build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0)
    base_dir = save_tiny(model, tokenizer, root / "base_model")
    train = root / "train"
    hypernet = make_hs(model, tokenizer, variant).save_pretrained(train / "HyperSteerTest")
    (train / "config.json").write_text(json.dumps({"model_name": str(base_dir), "layer": 2,
                                                   "component": "res"}))
    (train / "metadata.jsonl").write_text("".join(
        json.dumps({"concept_id": i, "concept": c}) + "\n" for i, c in enumerate(CONCEPTS)))
    return hypernet


class RunningServer:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 from a background thread."""

    def __init__(self, app, engine):
        import uvicorn

        self.engine = engine
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close()
