"""Governance: reviewer approval (four eyes, bound to the artifact's hash), the canary of a
challenger on live traffic, and the promotion gate."""
