"""Low-data methods and baselines: few-shot episodes, zero-shot, shallow and raw-input logistic regression."""
