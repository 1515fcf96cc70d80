"""Test support shipped with the package because the demo uses it too: a tiny random Gemma-2 and
a locally trained tokenizer. Imports nothing of the package, so any layer may use it."""
