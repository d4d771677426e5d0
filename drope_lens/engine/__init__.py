"""Layer 3, the engine: runs an experiment's units on one or many ranks and stores the rows.

results (``RunStore``: parts, fingerprints, resume) · distributed (``torchrun`` sharding and
collectives) · runner (what every ``drope-lens run`` command shares).

Imports only the layers below (model, measurement, hooks).
"""
