"""``hypersteer demo``: the whole main job on CPU in minutes, on a tiny base LM trained on the spot
and built-in concepts (held-in and held-out), with the offline stand-in judge."""
