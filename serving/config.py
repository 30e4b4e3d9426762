"""Serving knobs: which models and policies, and how the decision-log writer behaves.

Kept apart from :class:`riskloop.core.config.Settings` (which says *where* things are) because these
say *how* the service decides; they are still plain ``RISKLOOP_SERVING_*`` environment variables,
so an operator can switch to another (versioned) policy file without a code change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from riskloop.decisions.policy import POLICY_DIR

MAX_AUTO_WORKERS = 4


class ServingSettings(BaseSettings):
    """How the fraud endpoint turns a score into a decision, and how it logs it."""

    model_config = SettingsConfigDict(env_prefix="RISKLOOP_SERVING_", extra="ignore")

    model_alias: str = Field(default="champion", description="Registry alias served (champion or challenger).")
    challenger_alias: str = Field(
        default="challenger", description="Registry alias of the challenger, loaded beside the champion while the "
        "mode is canary or shadow ('' = never load one).")
    mode: Literal["champion", "canary", "shadow"] = Field(
        default="champion", description="Serving mode when no canary state is recorded in Postgres "
        "(governance.canary_state, set by `riskloop canary start|stop` and rollbacks, takes precedence): "
        "champion alone; canary = canary_share of requests decided by the challenger; shadow = both score "
        "every request, the champion decides, both are logged.")
    canary_share: float = Field(default=0.0, ge=0.0, le=1.0, description="Share routed to the challenger in canary "
                                "mode when no canary state is recorded.")
    canary_poll_s: float = Field(
        default=1.0, ge=0.0, description="How often serving re-reads the canary state from Postgres (and, while a "
        "canary runs, checks its tripwires): a rollback reaches every process within this. 0 = never.")
    canary_watch: bool = Field(
        default=True, description="Run the canary tripwires (riskloop.governance.canary.watch_once) in this process's poller "
        "while a canary runs; false when `riskloop canary watch` runs elsewhere.")
    feature_service: str = Field(default="fraud_model_v1", description="Feast feature service of the fraud model.")
    fraud_policy: Path = Field(
        default=POLICY_DIR / "fraud-v2.yaml",
        description="Decision policy (thresholds and hard rules) of the fraud endpoint: a versioned file "
        "(riskloop/decisions/policies/fraud-v<N>.yaml; an older version stays loadable for replays and by setting this).")
    credit_policy: Path = Field(default=POLICY_DIR / "credit-v1.yaml", description="Policy of the credit endpoint.")
    policy_poll_s: float = Field(
        default=0.5, ge=0.0, description="Each serving process LISTENs for policy-store changes (approved versions, "
        "list entries, emergency stops) and applies them at once; it also re-reads the store at least this often, in "
        "case a notification was lost, and to drop expired entries. 0 = never (the configured policy files only).")
    credit_model_alias: str = Field(default="champion", description="Registry alias of the credit model served.")
    credit_feature_service: str = Field(default="credit_model_v1", description="Feast service of the credit model.")
    known_device_lookback_days: int = Field(
        default=180, gt=0, description="Start-up warm-up of known (customer, device) pairs from the decision log.")
    workers: int = Field(
        default=0, ge=0, description="uvicorn worker processes of `riskloop serve` (its --workers); 0 = one per "
        "core this process may run on, at most 4, less one core for Postgres when it runs on the same machine "
        "(the embedded stack) (ServingSettings.worker_count). Each worker decides alone; what must agree "
        "across them goes through Postgres and the metrics directory.")
    known_device_poll_s: float = Field(
        default=1.0, ge=0.0, description="How often each serving process reads the (customer, device) pairs "
        "allowed by any process since its last read (serving.known_devices): with several workers or replicas a "
        "device allowed by one is known to the others within about this. 0 = never (this process's own only).")
    card_location_poll_s: float = Field(
        default=1.0, ge=0.0, description="How often each serving process reads the card sightings (country, time) "
        "logged by any process since its last read (serving.card_locations), for the impossible-travel rule: with "
        "several workers or replicas a payment scored by one is compared against by the others within about this "
        "(until then the rule can miss that pair, never invent one). 0 = never (this process's own only). Unused "
        "when the policy has no impossible_travel rule.")
    metrics_dir: str | None = Field(
        default=None, description="Set by `riskloop serve --workers N` (N > 1), with prometheus_client's own "
        "PROMETHEUS_MULTIPROC_DIR to the same directory: /metrics then merges every worker's values from there. "
        "Not PROMETHEUS_MULTIPROC_DIR itself: Feast sets that variable to a temp dir of its own on import.")
    feature_store_retry_s: float = Field(
        default=5.0, ge=0.0, description="After a feature-store failure, rebuild it at most this often.")
    model_poll_s: float = Field(
        default=30.0, ge=0.0, description="How often to check whether the served alias moved (or the registry "
        "came back after a last-known-good start) and swap the model in; 0 = only /v1/admin/reload.")
    online_read: Literal["sql", "sdk"] = Field(
        default="sql", description="How the fraud endpoint reads online features: 'sql' = one prepared statement "
        "over Feast's Postgres online-store tables (planned from the Feast repo at start-up), 'sdk' = "
        "FeatureStore.get_online_features in a worker thread.")
    online_timeout_s: float = Field(
        default=0.1, gt=0.0, description="A direct online read slower than this degrades the decision to "
        "rules-only (and the store is re-bound after feature_store_retry_s).")
    online_pool_size: int = Field(default=4, gt=0, description="At most this many connections for the direct online "
                                  "read (opened as needed; serving.online_sql.SqlReader).")
    online_cache_size: int = Field(
        default=100_000, ge=0, description="Decoded online rows kept per feature view in each serving process for "
        "the direct read, dropped as soon as the store notifies a change (serving.online_cache); 0 = every "
        "read goes to the store.")
    access_log: bool = Field(
        default=False, description="uvicorn's per-request access log line (off: it costs more than the "
        "decision's own logging; /metrics counts requests).")
    max_reasons: int = Field(default=4, ge=0, le=4, description="Reason codes returned with each fraud decision "
                             "(the largest contributions towards fraud), at most 4.")
    max_body_bytes: int = Field(
        default=65_536, gt=0, description="A fraud scoring request body over this is refused with 413 before "
        "it is parsed (a payment is a few hundred bytes).")
    api_max_body_bytes: int = Field(
        default=65_536, gt=0, description="Any other request body of the service (credit scoring, overrides, "
        "outcomes, cases, reviews) over this is refused with 413 before it is read; a body on a keyed route "
        "without a valid key gets its 401 unread. Webhooks have their own (RISKLOOP_WEBHOOK_MAX_BODY_BYTES).")
    list_import_max_body_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="A CSV of list entries (POST /v1/policy/lists/import) over this is "
        "refused with 413 before it is read: room for a few hundred thousand entries.")
    log_queue_size: int = Field(default=10_000, gt=0, description="Decisions waiting for their commit, at most.")
    log_batch_size: int = Field(default=500, gt=0, description="Rows per commit of the decision-log writer, at most.")
    log_linger_s: float = Field(
        default=0.0, ge=0.0, description="How long the writer lets a batch gather after its first row. Every "
        "decision waits for its row's commit before it is answered, so this is added to each answer; "
        "under load batches gather anyway while the previous one commits.")
    log_enqueue_timeout_s: float = Field(
        default=1.0, ge=0.0, description="How long a request waits for room in a full queue before a 503.")
    log_commit_timeout_s: float = Field(
        default=2.0, gt=0.0, description="How long a request waits for its decision's log row to commit before "
        "it is answered 503 instead (a decision is answered only once logged).")
    log_synchronous_commit: Literal["off", "local", "remote_write", "on", "remote_apply"] = Field(
        default="off", description="Postgres synchronous_commit of the decision-log writer's session. 'off': a "
        "decision is answered once Postgres has committed its row, before the WAL flush; killing serving "
        "loses nothing answered, a crash of Postgres or its host can lose the commits of the last "
        "3 x wal_writer_delay (600 ms by default). 'on': also wait for the flush (an fsync per group commit).")
    log_shutdown_timeout_s: float = Field(
        default=30.0, gt=0.0, description="On shutdown, how long the writer may take to commit what is still "
        "queued; a row it cannot commit is refused to its request (503), never kept for later.")
    api_keys: str | None = Field(
        default=None, validation_alias=AliasChoices("RISKLOOP_API_KEYS", "api_keys"),
        description="Principals and their keys, 'name:role:key,...' (see riskloop's RISKLOOP_API_KEYS; with "
        "RISKLOOP_API_KEYS_FILE and RISKLOOP_OIDC_ISSUER they add up), sent as 'Authorization: Bearer <key>'. "
        "None configured: every /v1 endpoint answers 401 (fail closed).")
    admin_token: str | None = Field(
        default=None, description="Legacy: one more key with role admin (prefer RISKLOOP_API_KEYS).")

    def worker_count(self, *, database_here: bool = False) -> int:
        """``workers``, or one per core available to this process (its CPU affinity, which a
        container's cpuset limits), at most :data:`MAX_AUTO_WORKERS`: each worker holds its own model,
        feature-read pool and Postgres connections. ``database_here``: Postgres shares these cores
        (the embedded stack), and every decision costs it a commit and, on a cache miss, a read, so
        one core is left to it: on 2 cores one worker answered 500 decisions/s with a lower p99 than
        two (BENCHMARKS.md)."""
        if self.workers:
            return self.workers
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        if database_here:
            cores -= 1
        return max(1, min(cores, MAX_AUTO_WORKERS))
