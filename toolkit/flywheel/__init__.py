"""The retraining flywheel: relayed inputs with the remote's answers -> a new deployment."""
