"""tunecluster: distributed hyperparameter tuning for Keras models.

Data flow: ``spec`` (a validated job) -> ``chief`` (one KerasTuner oracle per job)
-> ``store`` (Redis: queues, leases, events) -> ``worker`` (trial runner, strategy)
-> metrics back through ``store`` -> ``chief`` finalizes results.
``cluster`` wires the roles together for a local run.
"""

__version__ = "0.1.0"
