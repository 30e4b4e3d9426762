"""What every stage stands on: settings, database access, the raw contract, logging, card-number
handling, object storage, webhook signatures, the real-time window spec and on-call paging."""
