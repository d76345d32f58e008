"""Export: a Keras model (single- or multi-exit) to int8 TFLite, C and a ``.bisup`` bundle."""
