"""One typed settings object for every riskloop component.

Everything is read from ``RISKLOOP_*`` environment variables with safe local defaults, so the
embedded stack needs no configuration at all and a production deployment needs only a few
variables (``RISKLOOP_DATABASE_URL``, ``RISKLOOP_MLFLOW_TRACKING_URI``, ``RISKLOOP_ARTIFACT_ROOT``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_CHECKOUT = Path(__file__).resolve().parents[2]
_PACKAGED = Path(__file__).resolve().parents[1] / "project"  # the wheel's copy (pyproject: force-include)


def _project_root() -> Path:
    configured = os.environ.get("RISKLOOP_PROJECT_DIR")
    if configured:
        return Path(configured).resolve()
    return _CHECKOUT if (_CHECKOUT / "dbt_project").is_dir() else _PACKAGED


# Where the dbt project, feature repo, DAGs and expectation suites are: RISKLOOP_PROJECT_DIR if set,
# else the checkout this package sits in, else (an installed wheel) the copy the wheel ships.
PROJECT_ROOT = _project_root()
# Where riskloop writes by default (its home, the demo's summary): the project directory, except
# that an installed package's copy is read-only, so there the working directory.
WORK_ROOT = Path.cwd() if PROJECT_ROOT == _PACKAGED else PROJECT_ROOT

# The databases riskloop keeps apart on one server: dropping or migrating one component's
# store (say Airflow's) must never touch another's.
WAREHOUSE_DB = "riskloop"
AIRFLOW_DB = "riskloop_airflow"
MLFLOW_DB = "riskloop_mlflow"
FEAST_DB = "riskloop_feast"
ALL_DATABASES = (WAREHOUSE_DB, AIRFLOW_DB, MLFLOW_DB, FEAST_DB)

# The database roles of riskloop's components (riskloop.core.roles grants each what its SQL needs).
# Migrations are the owner's: the login of the stack (the embedded server's superuser, or
# RISKLOOP_DATABASE_URL's user).
DbRole = Literal["ingest", "transform", "serving", "governance", "analyst"]
DB_ROLES: tuple[str, ...] = DbRole.__args__  # type: ignore[attr-defined]
EMBEDDED_SUPERUSER = "postgres"
# The services riskloop starts that keep a database of their own: each logs in as a role that owns
# that database and nothing else (riskloop_airflow, riskloop_mlflow), so a flaw in one reads no decision.
SERVICE_DATABASES: dict[str, str] = {"airflow": AIRFLOW_DB, "mlflow": MLFLOW_DB}


def db_role_name(component: str) -> str:
    """The Postgres role of a component: ``riskloop_serving`` and so on."""
    return f"riskloop_{component}"


@dataclass(frozen=True)
class PgServer:
    """Where a Postgres server is and how to log in; builds a URL for each database/driver."""

    host: str
    port: int
    user: str
    password: str = field(default="", repr=False)  # never in a log line or a traceback's locals

    @classmethod
    def from_url(cls, url: str) -> tuple["PgServer", str]:
        """Parse ``postgresql[+driver]://user:pw@host:port/db`` into a server and a database name."""
        parts = urlsplit(url)
        if not parts.scheme.startswith("postgres"):
            raise ValueError(f"not a PostgreSQL URL: {url!r}")
        server = cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
        )
        return server, (parts.path.lstrip("/") or WAREHOUSE_DB)

    def url(self, database: str, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL; ``driver=""`` gives a plain libpq URL."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{database}"


class CasePriority(BaseModel):
    """One case priority: reached by a score or an amount at risk, worked within its SLA."""

    name: str = Field(min_length=1)
    min_score: float = Field(ge=0, le=1)
    min_amount: float = Field(ge=0)
    sla_hours: float = Field(gt=0)


class Settings(BaseSettings):
    """riskloop's configuration. Every field is ``RISKLOOP_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RISKLOOP_", extra="ignore")

    home: Path = Field(
        default=WORK_ROOT / ".riskloop",
        description="Where the embedded stack keeps its data, logs and pid files.",
    )
    database_url: str | None = Field(
        default=None,
        description="An existing Postgres (its database is the warehouse; riskloop_airflow, "
        "riskloop_mlflow and riskloop_feast are created beside it). Unset: the embedded server.",
    )
    namespace: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_]{0,30}$",
        description="A dataset of its own on the same server: the warehouse becomes <warehouse>_<namespace> and "
        "the Feast store riskloop_feast_<namespace>, so a second dataset (the handbook benchmark's: "
        "`riskloop benchmark handbook` picks `handbook` itself) never writes over the first one's rows. "
        "Unset: the main warehouse.")
    pg_port: int = Field(default=55432, description="TCP port of the embedded Postgres (loopback).")
    db_role: DbRole | None = Field(
        default=None,
        description="The database role this process connects as (riskloop_<role>): ingest, transform, serving, "
        "governance or analyst. `riskloop serve` picks serving itself. Unset: the owner (the embedded server's "
        "superuser, or RISKLOOP_DATABASE_URL's user), which runs migrations and creates the roles.")
    db_password: SecretStr | None = Field(
        default=None,
        description="Password of db_role's login. Unset: <home>/secrets/pg_<role> (generated in local mode; "
        "`riskloop up` or `riskloop db roles --sql` sets it on the server).")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="An existing MLflow server. Unset: riskloop starts its own."
    )
    mlflow_port: int = Field(default=55000, description="Port of the MLflow server riskloop starts.")
    artifact_root: str | None = Field(
        default=None,
        description="Where MLflow stores artifacts: a directory or an s3:// URI (boto3; "
        "MLFLOW_S3_ENDPOINT_URL for S3-compatible stores). Unset: <home>/mlartifacts.",
    )
    airflow_port: int = Field(default=55080, description="Port of the Airflow api-server (UI, REST API) "
                              "that `riskloop up --airflow` starts (loopback).")
    airflow_admin_user: str = Field(default="admin", description="Admin user of Airflow's simple auth manager.")
    airflow_admin_password: SecretStr | None = Field(
        default=None,
        description="Its password. Unset: generated once in local mode (embedded Postgres) and kept in "
        "<home>/airflow/passwords.json; required when RISKLOOP_DATABASE_URL is set.",
    )
    pan_token_key: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 card-number tokens (riskloop.core.pan); keep it out of the warehouse "
        "database. Unset: generated once in local mode (embedded Postgres) into <home>/secrets/pan_token_key; "
        "required when RISKLOOP_DATABASE_URL is set.",
    )
    pan_key_ring: Path | None = Field(
        default=None,
        description="JSON file of the card-token keys added by `riskloop pan rotate` (mode 0600, outside the "
        "warehouse database; every process that tokenises reads it, so a deployment mounts it shared). The "
        "last key is current; RISKLOOP_PAN_TOKEN_KEY stays the first. Unset: <home>/secrets/pan_key_ring.json.",
    )
    subject_master_key: SecretStr | None = Field(
        default=None,
        description="Master key (at least 32 characters) that wraps each customer's data key, under which the "
        "personal fields of decisions are stored (riskloop.core.subject_keys; `riskloop erase customer` destroys a "
        "customer's data key). Keep it out of the warehouse database. Unset: generated once in local mode "
        "(embedded Postgres) into <home>/secrets/subject_master_key; required when RISKLOOP_DATABASE_URL is set.",
    )
    allow_unsealed_personal_fields: bool = Field(
        default=False,
        description="Let serving start without a subject master key outside local mode (RISKLOOP_DATABASE_URL set "
        "and RISKLOOP_SUBJECT_MASTER_KEY missing): decisions and case events then keep customers' personal fields in "
        "clear, no erasure can reach them, and /readyz says personal_fields_sealed: false. Default false: serving "
        "refuses to start without the key.",
    )
    subject_key_cache_s: float = Field(
        default=300.0, ge=0,
        description="How long a process keeps a customer's unwrapped data key in memory (seconds): after an "
        "erasure, a serving process may seal that customer's new decisions under the destroyed key for this long.",
    )
    schedule_start: date = Field(
        default=date(2024, 1, 1),
        description="First data interval (UTC day) of the time-scheduled DAGs (riskloop_ingest, "
        "riskloop_monitor): the day the pipeline's data begins.")
    schedule_end: date | None = Field(
        default=None, description="Last data interval to schedule (inclusive). Unset: no end.")
    schedule_catchup: bool = Field(
        default=False,
        description="Let the scheduler create a run for every missed interval since schedule_start "
        "(Airflow's catchup). Off by default: history is loaded with a backfill, on purpose.")
    fraud_model_name: str = Field(default="riskloop-fraud", description="Registered MLflow model of the fraud model.")
    credit_model_name: str = Field(default="riskloop-credit", description="Registered MLflow model of the credit model.")
    label_delay_days: int = Field(default=7, description="Days before a fraud label counts as known.")
    model_owner: str = Field(
        default="riskloop-ml", description="Who answers for the models: the owner line of every training "
        "run's model card (a team or a person).")
    dask_scheduler: str | None = Field(
        default=None, description="Address of a Dask scheduler (tcp://host:8786): training fits with "
        "xgboost.dask on its workers. Unset: single-process XGBoost.")
    feature_repo: Path = Field(default=PROJECT_ROOT / "feature_repo", description="The Feast repository (feature_store.yaml "
                               "and the feature definitions).")
    dbt_project_dir: Path = Field(default=PROJECT_ROOT / "dbt_project", description="The dbt project that builds the marts.")
    dags_folder: Path = Field(default=PROJECT_ROOT / "dags", description="The Airflow DAG files.")
    landing_dir: Path | None = Field(
        default=None, description="Where simulated/processor files land. Unset: <home>/landing."
    )

    # --- identity (riskloop.core.identity): who acts ---------------------------------------------
    api_keys: str | None = Field(
        default=None, description="Principals and their keys, comma-separated 'name:role:key' (roles scorer, "
        "reviewer, analyst, admin, policy; the name is a person or a service, e.g. alice, svc-airflow), sent as "
        "'Authorization: Bearer <key>'. The legacy 'key:role' still scores but has no name and may take no "
        "governance action (approve, reject, promote, train, canary, policy change).")
    api_keys_file: Path | None = Field(
        default=None, description="A file of principals, one 'name:role:key' per line ('#' comments); the key may "
        "be given as 'sha256:<64 hex>' of the key so the file holds no secret. Must not be readable by others (0600).")
    api_key: SecretStr | None = Field(
        default=None, description="The CLI's own key: `riskloop review`, `promote`, `canary` and `train` act as "
        "the principal it identifies in RISKLOOP_API_KEYS / RISKLOOP_API_KEYS_FILE (or an OIDC token).")
    oidc_issuer: str | None = Field(
        default=None, description="OIDC: accept bearer JWTs from this issuer (its 'iss'). Unset: API keys only.")
    oidc_audience: str | None = Field(default=None, description="OIDC: the required 'aud' of those tokens.")
    oidc_jwks_url: str | None = Field(default=None, description="OIDC: the issuer's JWKS URL (signing keys).")
    oidc_public_key: str | None = Field(
        default=None, description="OIDC: the issuer's PEM public key (or a path to it), instead of a JWKS URL.")
    oidc_name_claim: str = Field(default="preferred_username", description="OIDC: the claim naming the principal.")
    oidc_role_claim: str = Field(
        default="riskloop_role", description="OIDC: the claim holding its riskloop role (a string, or a list whose "
        "first riskloop role is taken; dotted paths such as realm_access.roles are followed).")
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256"], description="OIDC: accepted signature algorithms.")
    review_identities: dict[str, str] = Field(
        default_factory=dict, description='Legacy: names for unnamed "key:role" keys, as JSON {"<key fingerprint>": '
        '"<name>"}. Prefer issuing keys as name:role:key.')

    # --- retention (riskloop.governance.retention): how long each data class is kept ---------------
    retention_raw_payloads_days: int | None = Field(
        default=None, ge=1, description="Days the webhook inbox keeps a received body (raw.webhook_inbox); "
        "older ones are deleted by `riskloop retention apply` and the riskloop_retention DAG. Unset: kept.")
    retention_decisions_days: int | None = Field(
        default=None, ge=1, description="Days a decision is kept (serving.decision_log with its overrides, step-up "
        "outcomes and dead letters), unless a kept case holds it. Unset: kept.")
    retention_cases_days: int | None = Field(
        default=None, ge=1, description="Days a closed case is kept after it closed (cases.cases and its events). "
        "Unset: kept.")
    retention_model_artifacts_days: int | None = Field(
        default=None, ge=1, description="Days a model version without an alias is kept in the registry after it was "
        "registered, unless a kept decision was made by it (a replay needs its artifact). Unset: kept.")

    # --- cases (riskloop.decisions.cases): the analysts' queue ------------------------------------
    analyst: str | None = Field(
        default=None, description="Who runs `riskloop cases claim|release|note|close` (recorded in cases.case_events); "
        "--analyst overrides it. Unset: the operating-system user.")
    cases_priorities: list[CasePriority] = Field(
        min_length=1,
        default_factory=lambda: [CasePriority(name="P1", min_score=0.9, min_amount=1000.0, sla_hours=4.0),
                                 CasePriority(name="P2", min_score=0.7, min_amount=250.0, sla_hours=24.0),
                                 CasePriority(name="P3", min_score=0.0, min_amount=0.0, sla_hours=72.0)],
        description="Case priorities, most urgent first, as JSON [{name, min_score, min_amount, sla_hours}]: a case "
        "takes the first whose min_score its highest score reaches or whose min_amount its amount at risk (major "
        "units of each payment's currency, summed) reaches; the last is the default. Its SLA sets the case's due "
        "time (opened + sla_hours); a later decision can raise a case's priority, never lower it.")
    cases_open_on_step_up_failure: bool = Field(
        default=True, description="A failed step-up challenge (POST /v1/decisions/{id}/outcome) opens or joins "
        "a case, as a review decision does.")
    cases_open_on_chargeback: bool = Field(
        default=True, description="`riskloop cases sync` opens or joins a case for every allowed payment that "
        "came back as a fraud chargeback (missed fraud, for learning).")
    cases_sync_lookback_days: int = Field(
        default=30, gt=0, description="`riskloop cases sync` looks this far back for decisions without their case.")
    cases_model_fraud_score: float = Field(
        default=0.5, ge=0, le=1, description="Analyst agreement with the model: the model 'says fraud' for a case "
        "whose highest score reaches this; it agrees with fraud_confirmed then, with legitimate otherwise.")
    cases_stats_window_days: int = Field(
        default=30, gt=0, description="Time to disposition, review precision and agreement: over the cases "
        "closed in this many days.")
    cases_sla_breach_max: int = Field(
        default=0, ge=0, description="Alert case_sla_breach: more unclosed cases than this are past their due time.")
    cases_growth_window_hours: float = Field(
        default=24.0, gt=0, description="Alert case_queue_growth: cases opened vs closed in this window...")
    cases_growth_ratio: float = Field(
        default=1.5, gt=1, description="...opened at least this multiple of closed...")
    cases_growth_min: int = Field(default=20, ge=1, description="...and at least this many more opened than closed.")

    # --- alerts (riskloop.core.alerts): sinks, links, retries, noise control ---------------------
    alert_slack_webhook_url: SecretStr | None = Field(
        default=None, description="Slack-compatible incoming webhook URL (its path is the secret). Unset: no Slack.")
    alert_webhook_url: str | None = Field(
        default=None, description="Generic HTTP webhook receiving each alert as JSON, signed with the "
        "Standard Webhooks scheme. Unset: no generic webhook.")
    alert_webhook_secret: SecretStr | None = Field(
        default=None, description="Its signing secret, whsec_<base64>; required when the URL is set.")
    alert_smtp_host: str | None = Field(default=None, description="SMTP server for alert e-mail. Unset: no e-mail.")
    alert_smtp_port: int = Field(default=25, description="SMTP port (587 with STARTTLS, 465 implicit TLS).")
    alert_smtp_starttls: bool = Field(default=False, description="Upgrade the SMTP session with STARTTLS.")
    alert_smtp_user: str | None = Field(default=None, description="SMTP login (with the password), if any.")
    alert_smtp_password: SecretStr | None = Field(default=None, description="SMTP password (with the login).")
    alert_email_from: str = Field(default="riskloop-alerts@localhost", description="From address of alert e-mail.")
    alert_email_to: str = Field(default="", description="Recipients of alert e-mail, comma-separated.")
    alert_timeout_s: float = Field(default=5.0, gt=0, description="Per-attempt timeout of one delivery.")
    alert_retries: int = Field(default=3, ge=0, description="Retries of a failed delivery (after the first try).")
    alert_retry_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles per retry.")
    alert_runbook_base_url: str = Field(
        default="docs/runbooks", description="Where runbooks live; an alert links <base>/<alert kind>.md.")
    alert_report_base_url: str | None = Field(
        default=None, description="Public base URL of <home>/reports (an alert links <base>/<file>). "
        "Unset: a file:// link.")
    alert_raise_after: int = Field(default=2, ge=1, description="Raise after N consecutive breaching runs.")
    alert_clear_after: int = Field(default=2, ge=1, description="Resolve after M consecutive clean runs.")
    alert_min_samples: int = Field(
        default=200, ge=1, description="Fewer scored rows (drift) or decisions per window (tripwires) than "
        "this: no verdict, the alert state does not move.")
    alert_feature_thresholds: dict[str, float] = Field(
        default_factory=dict, description='Per-feature drift thresholds as JSON, e.g. {"amount": 0.2}: replace '
        "Evidently's threshold for that input (a p-value: drift below it; a distance: drift at or above).")
    # Realised performance on matured labels (riskloop.monitoring.drift.run_drift) and its alert.
    monitor_min_matured: int = Field(
        default=200, ge=1, description="Matured decisions (label known, both classes present) needed before "
        "the monitor computes realised AUC / AP and target drift.")
    monitor_ap_margin: float = Field(
        default=0.1, ge=0, description="performance_drop fires when realised average precision is more than "
        "this (absolute) below the model version's own test AP.")
    monitor_target_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Target drift: the matured fraud rate differs from the reference's "
        "(test-window) label rate when the two-proportion Z-test p-value is below this.")
    # Tripwires on the decision stream: a recent window against the baseline window before it.
    tripwire_window_minutes: int = Field(default=60, gt=0, description="Recent window of the tripwires.")
    tripwire_baseline_hours: int = Field(default=24 * 7, gt=0, description="Baseline window, just before it.")
    tripwire_approval_drop: float = Field(
        default=0.10, gt=0, description="Trip when the approval rate falls by this much (absolute) vs baseline.")
    tripwire_review_ratio: float = Field(
        default=2.0, gt=1, description="Trip when the review rate reaches this multiple of the baseline...")
    tripwire_review_min_rate: float = Field(default=0.02, ge=0, description="...and exceeds it by this much.")
    tripwire_override_ratio: float = Field(
        default=3.0, gt=1, description="Trip when one rule's or model's override rate reaches this multiple "
        "of its baseline...")
    tripwire_override_min_count: int = Field(default=5, ge=1, description="...with at least this many overrides.")
    tripwire_degraded_rate: float = Field(
        default=0.05, gt=0, description="Trip when this share of recent decisions was degraded (no model score).")
    tripwire_latency_p99_ms: float = Field(default=250.0, gt=0, description="Trip above this p99 latency (ms).")
    # The tripwire watcher (riskloop.monitoring.watch): the tripwires above every minute, not once a day.
    watch_service: bool = Field(
        default=True, description="`riskloop up` starts the tripwire watcher (`riskloop watch`) as a managed process; "
        "`riskloop down` stops it. false: run it yourself (a deployment's own service) or not at all.")
    watch_interval_s: float = Field(
        default=60.0, gt=0, description="Seconds between the watcher's rounds; with RISKLOOP_ALERT_RAISE_AFTER=2 a "
        "sustained breach pages within two rounds.")
    watch_window_minutes: int = Field(
        default=10, gt=0, description="Recent window of the watcher's tripwires (the daily run uses "
        "RISKLOOP_TRIPWIRE_WINDOW_MINUTES): short, so a shift shows within minutes.")
    watch_baseline_refresh_minutes: int = Field(
        default=15, gt=0, description="The watcher reads the baseline window (RISKLOOP_TRIPWIRE_BASELINE_HOURS) "
        "again after this long; in between, each round reads only its recent window.")
    # Settlement reconciliation (riskloop.monitoring.reconciliation): breaks in the processors' settlement files.
    settlement_break_rate: float = Field(
        default=0.01, ge=0, lt=1, description="Page when more than this share of a processor's recent settlement "
        "lines break (amount_mismatch, unknown_payment or not_captured against the payment fact).")
    settlement_break_files: int = Field(
        default=7, ge=1, description="The settlement check judges each processor's newest this many settlement files.")
    settlement_break_min_lines: int = Field(
        default=50, ge=1, description="Fewer settlement lines than this in those files: no verdict (neither pages "
        "nor resolves).")
    # --- canary (riskloop.governance.canary): the challenger on a share of live traffic, its gate and tripwires ---
    promotion_require_contracts: bool = Field(
        default=True, description="The promotion gate refuses a challenger whose training run recorded no passed "
        "data-contract run of the raw sources and the marts. false = marts built by hand (tests, notebooks); the "
        "decision's reason says so.")
    fairness_air_floor: float = Field(
        default=0.8, ge=0, le=1, description="Credit gate: refuse a challenger whose adverse impact ratio (lowest "
        "age band's approval rate over the highest's) is below this (0.8: the four-fifths rule).")
    fairness_gap_margin: float = Field(
        default=0.05, ge=0, le=1, description="Credit gate: refuse a challenger whose gap in true- or false-positive "
        "rate between age bands exceeds the champion's by more than this (absolute).")
    fairness_min_group: int = Field(
        default=100, ge=1, description="Fairness figures: an age band with fewer test applications than this is "
        "reported as too small to judge and left out of the adverse impact ratio and the TPR/FPR gaps (a group "
        "of a few dozen moves its approval rate by a tenth from one test window to the next).")
    fairness_approve_below: float = Field(
        default=0.25, gt=0, le=1, description="Fairness figures: a predicted PD below this counts as approved (the "
        "credit policy's refer threshold: above it a person decides).")
    promotion_job_timeout_s: float = Field(
        default=900.0, gt=0, description="How long the review page's promote action waits for the gate's job "
        "(its own process: a test set rebuilt through Feast, two models scored) before answering 504.")
    policy_require_backtest: bool = Field(
        default=False, description="Approving a policy draft (CLI, API, review page) is refused until a backtest "
        "is attached to it (`riskloop policy backtest VERSION --from ... --to ... --attach`). Off: the review "
        "page shows a draft without one as not backtested.")
    canary_required: bool = Field(
        default=True, description="The promotion gate refuses a challenger without a passed canary phase. "
        "false = an explicit opt-out for local/demo flows (the decision's reason says the canary was skipped).")
    canary_share: float = Field(default=0.05, gt=0, le=1, description="Share of a model's traffic (fraud "
                                "payments or credit applications) `riskloop canary start` routes to the challenger "
                                "(unless --share).")
    canary_min_minutes: float = Field(default=30.0, ge=0, description="A canary passes only after this long...")
    canary_min_decisions: int = Field(
        default=1000, ge=0, description="...and with at least this many scored challenger decisions.")
    canary_max_p99_ratio: float = Field(
        default=1.5, ge=1, description="Gate: the challenger's p99 latency may exceed the champion's by this factor...")
    canary_p99_slack_ms: float = Field(
        default=2.0, ge=0, description="...or by this many ms, whichever is larger (sub-ms p99s are noise).")
    canary_max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Gate: the challenger's error + degraded rate may exceed the "
        "champion's by at most this (absolute).")
    canary_max_psi: float = Field(
        default=0.1, gt=0, description="Gate: PSI of the challenger's scores against the champion's at most this.")
    canary_max_adverse_rate_change: float = Field(
        default=0.1, gt=0, le=1, description="Gate: the share of the challenger's decisions against the customer "
        "(fraud review/deny, credit decline/refer) may differ from the champion's by at most this (absolute).")
    canary_psi_bins: int = Field(default=10, ge=2, description="PSI bins (quantiles of the champion's scores).")
    canary_hard_max_psi: float = Field(
        default=0.5, gt=0, description="Tripwire: PSI beyond this rolls the canary back at once.")
    canary_hard_max_error_rate: float = Field(
        default=0.05, gt=0, le=1, description="Tripwire: challenger error + degraded rate this much above the "
        "champion's rolls back.")
    canary_hard_p99_ms: float = Field(
        default=250.0, gt=0, description="Tripwire: a challenger p99 latency above this (ms)...")
    canary_hard_p99_ratio: float = Field(
        default=2.0, ge=1, description="...and above this multiple of the champion's p99 rolls back.")
    canary_watch_min_decisions: int = Field(
        default=50, ge=1, description="Tripwires judge only with at least this many decisions in each arm.")
    canary_watch_window_s: float = Field(
        default=300.0, gt=0, description="Tripwires look at the canary's last this-many seconds of decisions.")
    canary_watch_interval_s: float = Field(
        default=1.0, gt=0, description="How often the watchdog (serving's poller or `riskloop canary watch`) checks.")
    batch_url: str | None = Field(
        default=None,
        description="Where processors' settlement and dispute files land: s3://bucket/prefix (boto3, "
        "credentials from the usual AWS variables) or a directory / file:// URL. Unset: <home>/batch.")
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible server (MinIO, moto…). Unset: AWS.")

    stream_poll_s: float = Field(
        default=1.0, gt=0, description="riskloop stream: longest wait between rounds when no inbox NOTIFY "
        "arrives (a round starts at once on each notice).")
    stream_page_rows: int = Field(default=2000, gt=0, description="riskloop stream: inbox rows read per page.")
    stream_partitions: int = Field(
        default=1, ge=1, description="Stream consumer processes `riskloop up` starts (`riskloop stream --partitions N "
        "--partition i`, i = 0 … N-1): each card and customer is recomputed and pushed by exactly one of them, so "
        "they share the work across cores or machines. Changing it replays a little of the inbox, never skips.")
    stream_service: bool = Field(
        default=True, description="`riskloop up` starts the stream consumer (`riskloop stream`, consumer "
        "--name default) as a managed process beside MLflow; `riskloop down` stops it. false: run it yourself "
        "(or not at all: a stack that receives no webhooks, such as the test suite's).")
    log_json: bool = Field(
        default=False,
        description="CLI and scoring server log one JSON object per line (with request/run ids) "
        "instead of human-readable lines. Airflow task logs are JSON lines either way.")

    def environ(self) -> dict[str, str]:
        """These settings as ``RISKLOOP_*`` variables: a child process given them (``riskloop stream``
        started by ``riskloop up``) reads back the very same settings, whether they came from the
        environment or were set in code (a test's ``Settings(database_url=...)``)."""
        import json

        from pydantic_core import to_jsonable_python

        out: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, dict | list | tuple):
                text = json.dumps(to_jsonable_python(value))  # nested models too (the case priorities)
            else:
                text = value.isoformat() if isinstance(value, date) else str(value)
            out[f"RISKLOOP_{name.upper()}"] = text
        return out

    # --- derived locations -------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def landing(self) -> Path:
        return self.landing_dir or self.home / "landing"

    @property
    def batch_store(self) -> str:
        return self.batch_url or str(self.home / "batch")

    @property
    def artifacts(self) -> str:
        return self.artifact_root or (self.home / "mlartifacts").as_uri()

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    def role_password_file(self, component: str | None) -> Path:
        """Where the password of a component's role (None: the embedded server's superuser) is kept."""
        return self.secrets_dir / (f"pg_{component}" if component else f"pg_{EMBEDDED_SUPERUSER}")

    def role_password(self, component: str | None) -> str:
        """A component's password (generated once into its file if missing)."""
        from riskloop.core.secretfiles import read_or_create

        if component is not None and component == self.db_role and self.db_password is not None:
            return self.db_password.get_secret_value()
        return read_or_create(self.role_password_file(component))

    @property
    def owner_pg(self) -> PgServer:
        """The owner's login: what migrations, role creation and the managed MLflow/Airflow use."""
        if self.database_url:
            return PgServer.from_url(self.database_url)[0]
        return PgServer(host="127.0.0.1", port=self.pg_port, user=EMBEDDED_SUPERUSER, password=self.role_password(None))

    @property
    def pg(self) -> PgServer:
        """The login of this process: its component's role (db_role) on the owner's server, else the owner."""
        owner = self.owner_pg
        if self.db_role is None:
            return owner
        return PgServer(host=owner.host, port=owner.port, user=db_role_name(self.db_role),
                        password=self.role_password(self.db_role))

    def service_pg(self, service: str) -> PgServer:
        """The login of a service riskloop starts with a database of its own (SERVICE_DATABASES): its
        role on the embedded server; on RISKLOOP_DATABASE_URL's server the owner's (riskloop may not
        create roles there)."""
        owner = self.owner_pg
        if not self.embedded:
            return owner
        return PgServer(host=owner.host, port=owner.port, user=db_role_name(service), password=self.role_password(service))

    def as_role(self, component: str) -> "Settings":
        """These settings for a process of ``component``, unless a role was chosen explicitly."""
        return self if self.db_role is not None else self.model_copy(update={"db_role": component})

    @property
    def warehouse_db(self) -> str:
        base = PgServer.from_url(self.database_url)[1] if self.database_url else WAREHOUSE_DB
        return f"{base}_{self.namespace}" if self.namespace else base

    @property
    def feast_db(self) -> str:
        """The Feast registry and online store's database (the namespace's own when one is set)."""
        return f"{FEAST_DB}_{self.namespace}" if self.namespace else FEAST_DB

    @property
    def databases(self) -> tuple[str, ...]:
        """The databases this configuration uses: the warehouse first, then Airflow's, MLflow's and Feast's
        (Airflow and MLflow are shared by every namespace: runs and models are told apart there by name)."""
        return (self.warehouse_db, AIRFLOW_DB, MLFLOW_DB, self.feast_db)

    @property
    def warehouse_url(self) -> str:
        """SQLAlchemy URL of the warehouse (psycopg 3)."""
        return self.pg.url(self.warehouse_db)

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def manages_mlflow(self) -> bool:
        return self.mlflow_tracking_uri is None

    def schedule_args(self) -> dict[str, object]:
        """``start_date``/``end_date``/``catchup`` of the time-scheduled DAGs, read at parse time.

        Plain aware datetimes (no pendulum, no Airflow import) so the DAG files stay cheap to parse;
        ``end_date`` bounds the *logical* date, so ``schedule_end`` is the last interval that runs.
        """
        def midnight(d: date) -> datetime:
            return datetime.combine(d, time(0), tzinfo=timezone.utc)

        return {"start_date": midnight(self.schedule_start),
                "end_date": midnight(self.schedule_end) if self.schedule_end else None,
                "catchup": self.schedule_catchup}


def get_settings() -> Settings:
    """Read the environment now (no module-level cache: tests and tasks change it)."""
    return Settings()


def plain_values(settings: Settings) -> dict[str, Any]:
    """Every field as a JSON-able value, secrets revealed: what a child process given these settings
    on a pipe (``Settings(**values)``) needs to act as this one."""
    from pydantic_core import to_jsonable_python

    return {k: v.get_secret_value() if isinstance(v, SecretStr) else to_jsonable_python(v) for k, v in settings}
