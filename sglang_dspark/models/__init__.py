"""Reference model implementations (pure torch) used by the trainer and as test oracles."""
