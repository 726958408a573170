"""``app`` for gunicorn (``gunicorn _wsgi:app``), as every Label Studio backend has.

Settings come from the environment; each worker process builds its own app and loads its model
once, in the background, after the fork (never use ``--preload`` with CUDA models).
"""
from segagent_backend.app import create_app

app = create_app()
