"""ISO 4217 alphabetic codes a card payment can be in.

A fixed list rather than a dependency (pycountry/babel) to keep the serving import path light;
fund codes, precious metals, SDR/bond units and the test/no-currency codes are left out on
purpose because no card authorisation carries them.
"""

from __future__ import annotations

ISO_4217: frozenset[str] = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS
GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW
KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD
NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD
SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS
VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
""".split())

# As dbt's minor_to_major macro (dbt_project/macros/money.sql): ISO 4217 exponents other than 2.
_EXPONENT_0 = frozenset("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split())
_EXPONENT_3 = frozenset("BHD IQD JOD KWD LYD OMR TND".split())


def minor_to_major(amount_minor: int, currency: str) -> float:
    """An amount in minor units → major units, as the marts the models were trained on convert it
    (0 decimals for JPY, 3 for KWD, 2 otherwise): serving must feed the model the same scale."""
    return amount_minor / (1 if currency in _EXPONENT_0 else 1000 if currency in _EXPONENT_3 else 100)
