"""Trace replay: the real reconciler with fakes, the peer baselines and the oracle."""
