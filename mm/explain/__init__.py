"""Why did the model decide that: exact modality Shapley values, Captum input attributions, and
the checks that they are faithful. Reads a model and a batch; training code never imports it.

- ``modality_shapley(model, batch)``: exact per-sample Shapley values of each modality and pairwise
  interactions (``mm.explain.shapley``); ``split_shapley`` / ``write_contributions`` for a split.
- ``attribute(model, batch, modality)``: Captum Integrated Gradients (or Occlusion) of the predicted
  class on pictures, spectrograms and text words (``mm.explain.attributions``); renderers in
  ``mm.explain.render``.
- ``ShallowModel``: the shallow baseline (logistic regression on frozen features) as a model the
  same functions explain, with its exact per-feature and per-block logit contributions.
- ``mm.explain.checks``: deletion curves, model randomisation, planted-region scores.
"""

from mm.explain.shapley import coalitions, modality_shapley, per_sample_rows, shapley_weights

__all__ = ["coalitions", "modality_shapley", "per_sample_rows", "shapley_weights"]
