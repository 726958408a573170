"""SegAgent as a Label Studio ML backend.

Layers (each imports only the ones below it):
  agent/      episode loop, segmenters, click simulator: no HTTP, Redis or Label Studio
  trainer/    (top-level package) trajectories, datasets, fine-tuning, evaluation
  service     settings, labelstudio/ translation, media, app, cli
Nothing heavy is imported here.
"""

__version__ = "0.1.0"
