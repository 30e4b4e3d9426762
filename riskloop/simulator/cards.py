"""Simulated card numbers: one Luhn-valid PAN per customer, with a realistic scheme mix.

A processor sends riskloop card data in a few places (a card-present authorisation webhook, a
score request from a checkout that holds the number); the simulator emits it there so the
tokenising edges (``riskloop.core.pan``) are exercised end to end. The numbers are built from public
*test* BINs (Visa 424242/411111/400011, Mastercard 555555/510510/222300, Amex 378282/371449), so
nothing here is a real card, yet every one is Luhn-valid and inside its scheme's IIN range.
"""

from __future__ import annotations

import numpy as np

# (BIN, total length) — weights give roughly 60% Visa, 30% Mastercard, 10% Amex.
_BINS = (("424242", 16), ("411111", 16), ("400011", 16), ("555555", 16), ("510510", 16), ("222300", 16),
         ("378282", 15), ("371449", 15))
_WEIGHTS = np.array([0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05, 0.05])


def _check_digits(body: np.ndarray) -> np.ndarray:
    """Luhn check digit for each row of a (n, k) digit matrix (the PAN without its last digit)."""
    rev = body[:, ::-1]
    doubled = rev.copy()
    doubled[:, 0::2] *= 2  # the digit next to the check digit is doubled
    doubled[doubled > 9] -= 9
    return (10 - doubled.sum(axis=1) % 10) % 10


def pans_for(customer_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A PAN (object array of str) per customer id (int): the same id and seed give the same card."""
    all_ids = np.asarray(customer_ids, dtype=np.int64)
    ids, back = np.unique(all_ids, return_inverse=True)  # one string per card, not per event
    rng = np.random.default_rng([seed, 0xCA4D])
    choice = rng.choice(len(_BINS), size=int(ids.max()) + 1 if len(ids) else 0, p=_WEIGHTS)[ids]
    out = np.empty(len(ids), dtype=object)
    for b, (bin_, length) in enumerate(_BINS):
        sel = np.flatnonzero(choice == b)
        if not len(sel):
            continue
        n_acct = length - 7  # BIN (6) + account digits + check digit (1)
        acct = (ids[sel] * 7919 + 1_000_003) % (10 ** n_acct)  # spread ids over the account range
        digits = np.zeros((len(sel), length - 1), dtype=np.int64)
        digits[:, :6] = [int(c) for c in bin_]
        for k in range(n_acct):
            digits[:, 6 + k] = (acct // 10 ** (n_acct - 1 - k)) % 10
        check = _check_digits(digits)
        full = np.concatenate([digits, check[:, None]], axis=1)
        out[sel] = ["".join(map(str, row)) for row in full]
    return out[back.reshape(-1)]
