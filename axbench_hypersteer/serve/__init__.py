"""Serving a trained hypernetwork: ``hypersteer serve`` (OpenAI-compatible, batched, with a
playground page) and ``hypersteer vectors`` (export for engines that serve fixed vectors).

Built on the model API only (``HyperSteer``); nothing in the model imports this package, and its
dependencies (fastapi, uvicorn, gguf) are the ``serve`` extra.
"""
