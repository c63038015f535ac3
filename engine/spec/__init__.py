"""Speculative decoding: proposers (host-only) and the verification rule.

`ngram` proposes draft tokens by prompt lookup over a request's own tokens
(no JAX); `rejection` holds the acceptance rule the verify step runs on the
device (see engine/steps.py) and its textbook reference.
"""
