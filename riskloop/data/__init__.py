"""Data in: landed files and processor batch files into ``raw``, the webhook inbox, data contracts
(Great Expectations) with quarantine, and the dbt transformation into the marts."""
