"""Job dispatch: inline in the web process (no Redis) or RQ queues served by resident model workers.

Names follow RQ's: a *queue* holds *jobs*, a *worker* runs them, *registries* keep the running and
failed ones. The web process uses ``dispatch``; ``segagent worker`` runs ``worker``; the functions a
worker executes live in ``jobs``; ``status`` reads depths, failures and worker health for
``/health``, ``/metrics`` and ``segagent jobs``.
"""
