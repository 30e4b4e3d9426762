"""Know-your-customer records: one verification per customer, before the simulation starts.

The handbook has no customer attributes beyond spending, so KYC is drawn independently of
fraud: it gives the ingestion, dbt and Great Expectations layers a realistic dimension table
(EU-heavy countries, rare sanctions hits and politically exposed persons) without leaking a
label.  Verification happens 1-3 years before the first simulated day, so every credit
application (the earliest is one year before the start) comes after the customer's KYC.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from riskloop.simulator import frames as fr

SANCTIONS_HIT_RATE = 0.002
PEP_RATE = 0.01
VERIFIED_DAYS_BEFORE_START = (366.0, 1096.0)

# EU member states weighted by population (millions, rounded), plus a few non-EU countries.
_EU = {"DE": 84, "FR": 68, "IT": 59, "ES": 48, "PL": 37, "RO": 19, "NL": 18, "BE": 12, "CZ": 11, "SE": 10.5,
       "PT": 10.4, "GR": 10.4, "HU": 9.6, "AT": 9.1, "BG": 6.4, "DK": 5.9, "FI": 5.6, "SK": 5.4, "IE": 5.3,
       "HR": 3.9, "LT": 2.9, "SI": 2.1, "LV": 1.9, "EE": 1.4, "CY": 0.9, "LU": 0.7, "MT": 0.5}
_NON_EU = ("GB", "CH", "NO", "US", "UA", "TR")
NON_EU_SHARE = 0.05
COUNTRIES: tuple[str, ...] = tuple(_EU) + _NON_EU
COUNTRY_WEIGHTS: tuple[float, ...] = tuple(
    [(1 - NON_EU_SHARE) * w / sum(_EU.values()) for w in _EU.values()] + [NON_EU_SHARE / len(_NON_EU)] * len(_NON_EU))

LEVELS = ("basic", "standard", "enhanced")
LEVEL_WEIGHTS = (0.55, 0.38, 0.07)
DOCUMENTS = ("passport", "id_card", "driving_licence")
EU_DOCUMENT_WEIGHTS = (0.30, 0.55, 0.15)


def derive_kyc(customer_ids: np.ndarray, start_ns: int, rng: np.random.Generator) -> pd.DataFrame:
    """One ``kyc_records`` row per customer id (int64 array), verified before ``start_ns``."""
    n = len(customer_ids)
    country = rng.choice(len(COUNTRIES), n, p=COUNTRY_WEIGHTS)
    non_eu = country >= len(_EU)
    document = rng.choice(len(DOCUMENTS), n, p=EU_DOCUMENT_WEIGHTS)
    document[non_eu] = DOCUMENTS.index("passport")  # national id cards travel only within the EU
    sanctions_hit = rng.random(n) < SANCTIONS_HIT_RATE
    pep = rng.random(n) < PEP_RATE
    level = rng.choice(len(LEVELS), n, p=LEVEL_WEIGHTS)
    level[pep | sanctions_hit] = LEVELS.index("enhanced")  # enhanced due diligence is mandatory there
    days_before = rng.uniform(*VERIFIED_DAYS_BEFORE_START, n)
    verified = start_ns - (np.rint(days_before * 86_400) * fr.NS_PER_SECOND).astype(np.int64)
    return fr.schema_frame("kyc_records", {
        "customer_id": fr.ints_to_str(customer_ids),
        "verification_level": fr.choice_labels(LEVELS, level),
        "document_type": fr.choice_labels(DOCUMENTS, document),
        "sanctions_screening": fr.choice_labels(("clear", "hit"), sanctions_hit.astype(np.int64)),
        "pep": pep,
        "country": fr.choice_labels(COUNTRIES, country),
        "verified_at": verified,
    }, n)
