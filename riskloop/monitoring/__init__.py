"""Monitoring: input and performance drift of a served model (Evidently), tripwires on the
decision stream, and the checks that turn both into incidents."""
