"""Keras model + in-graph supervisor -> full-int8 TFLite -> TFLite Micro C arrays, and the checks.

Modules, one job each:
- ``supervisors``: confidence layers built from TFLM-supported ops, with numpy references.
- ``graph``: loads a model and attaches a supervisor, giving named ``scores``/``confidence`` outputs.
- ``quantize``: SavedModel export and full-int8 conversion (never Flex).
- ``tflite_model``: reads a ``.tflite``: ops, tensors, quantization, outputs by signature name.
- ``coverage``: op coverage and the int8 graph rules TFLM enforces.
- ``arena``: the true minimum arena, by binary search in subprocess TFLM probes.
- ``runners``: TFLM (the board oracle) and LiteRT runners over int8 tensors.
- ``fidelity``: float vs int8 accuracy, TFLM vs LiteRT agreement, supervisor AUROC.
- ``caveats``: checks for known kernel caveats of boards.
- ``c_arrays``: ``model_data.h``/``.cc`` with aligned arrays and the generated op resolver.
- ``engine``: bisup's interpreter-free C (``model_infer.c``), byte-exact with TFLM; ``latency`` its estimate.
- ``artefacts``: every file one stage writes for another (thresholds, report, manifest, policy), versioned.
- ``exits``, ``exits_stages``: multi-exit models (exit heads, cuts) and their cut into stage models.
"""
