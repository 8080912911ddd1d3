"""The science: the CCS'21 protocol and what it measures, on the contracts only.

The split (protocol), the recommender service and its defenses (service), threat models and
query access (threat), ranking, membership and utility metrics, intervals over seeds, synthetic
data. No file, cache or run here: the engine above computes these into stages.
"""
