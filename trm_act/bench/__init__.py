"""Benchmarks: ``python -m trm_act.bench {env,act}``. Each prints ratios against a peer measured in the same run."""
