"""The shape of one decision: what the trade-replay environment emits and what the model and the loss read.

Plain numbers without imports, so that ``trm_act.model`` and ``trm_act.loss`` take their defaults from here
without knowing the market (the model knows no environment; the loss imports only torch and this). The
environment defines the things these count, its features (``trm_act.envs.features.FEATURE_NAMES``) and
strategies (``trm_act.envs.STRATEGIES``); the tests check that the counts agree.
"""

WINDOW = 32
"""Bars per observation. 32 gives banded attention more past to reach with each extra reasoning step; 16 and 24
bars captured less of the regime oracle's PnL on the validation markets, 64 barely more at twice the cost."""

N_FEATURES = 10
"""Features per bar of an observation (``len(FEATURE_NAMES)``)."""

N_STRATEGIES = 8
"""Strategies to choose from: the actions, and the width of the task logits (``len(STRATEGIES)``)."""
