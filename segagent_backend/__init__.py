"""SegAgent as a Label Studio ML backend.

Layers (each imports only the ones below it; no cycles):
  agent/      episode loop, segmenters, click simulator: no HTTP, Redis or Label Studio
  trainer/    (top-level package) trajectories, datasets, fine-tuning, evaluation
  service     settings, wiring (engine parts from settings), model_host (load, reload, lock, run),
              versions, registry, media, labelstudio/ (translation), corrections, learning, queue/, webhook
  front       app (Flask), cli/ (the ``segagent`` command)
Nothing heavy is imported here.
"""

__version__ = "0.1.0"
