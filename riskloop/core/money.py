"""Amounts: minor units (what every feed carries) to major units (what models and people read)."""

from __future__ import annotations

# As dbt's minor_to_major macro (dbt_project/macros/money.sql): ISO 4217 exponents other than 2.
_EXPONENT_0 = frozenset("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split())
_EXPONENT_3 = frozenset("BHD IQD JOD KWD LYD OMR TND".split())


def minor_to_major(amount_minor: int, currency: str) -> float:
    """An amount in minor units → major units, as the marts the models were trained on convert it
    (0 decimals for JPY, 3 for KWD, 2 otherwise): serving must feed the model the same scale."""
    return amount_minor / (1 if currency in _EXPONENT_0 else 1000 if currency in _EXPONENT_3 else 100)
