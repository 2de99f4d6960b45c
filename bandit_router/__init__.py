"""The bandit-router service: featurizer, replay, CLI (and, as they land, API, learner, storage)."""
