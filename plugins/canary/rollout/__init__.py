"""One rollout's steps: the frozen plan, observing a stage, the shadow test, the endpoint lease, the report."""
