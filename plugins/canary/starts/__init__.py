"""What starts rollouts: the nightly pick-up, registry events, MLflow webhooks."""
