"""Pure logic of omniprofile: event schemas, profile updates, synthetic data.

Nothing in this package imports Faust, Kafka clients or Redis; see tests/unit/test_purity.py.
"""
