"""What a model is: the data contracts, the features, training, metrics and the registry adapter."""
