"""The retraining loop's steps: point-in-time training sets, training, validation and its gates, promotion, drift."""
