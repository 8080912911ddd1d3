"""The kit plugin authors test and build with: the conformance checks (``checks``) and torch helpers.

Above the science (a check may serve a list or build an adversary view), below the engine.
"""
