"""Names of the exported model's outputs, shared by the exporter that writes them and the runtime
that reads them (apart from ``graph`` so that reading a model never imports Keras)."""

SCORES = "scores"
CONFIDENCE = "confidence"
ACTIVATION = "activation"  # a stage of a multi-exit model: the cut, for the next stage or the cloud
