"""Features: the Feast store (offline point-in-time, online), its Postgres offline store, the
real-time stream that pushes windows online, and the point-in-time training sets."""
