"""Machine learning for ad decisions: features, synthetic data, training and model scoring.

* :mod:`vastserver.ml.features`: the one feature definition shared by training and serving.
* :mod:`vastserver.ml.truth`: the hidden ground-truth viewer model behind synthetic data.
* :mod:`vastserver.ml.synth`: ``vastserver gen-events``, synthetic event logs from the real
  decision path.
* :mod:`vastserver.ml.train`: ``vastserver train``, event log -> model bundle.
* :mod:`vastserver.ml.model`: loading/validating a bundle and the :class:`ModelScorer`.

Only this package imports xgboost; ``vastserver.pipeline`` stays free of it.
"""
