"""The one settings object: defaults from ``config/defaults.toml``, then a user file, then env.

Built once in the entry point and passed down; nothing reads settings at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.access import AccessPolicy
from core.cells import snapshot_bound_bytes
from core.config import DEFAULT_MAX_EVENT_LEAD_S, DEFAULT_MAX_FAILURE_MODES, DetectionConfig

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
# Faust's producer sends a cell's snapshot as one record, at most 1,000,000 bytes by default
# (producer_max_request_size); the rest is room for the key and the record batch around it.
SNAPSHOT_BUDGET_BYTES = 900_000
# Settings that are secrets: the environment only (RW_API__KEYS, RW_SLACK__TOKEN, ...), never a file
# that could be committed, copied into an image or shown in a review.
SECRET_SETTINGS = (("api", "keys"), ("slack", "token"), ("slack", "signing_secret"))


class ConfigFileError(ValueError):
    """A config file that cannot be used as it is (it sets a secret)."""


class _TomlWithoutSecrets(TomlConfigSettingsSource):
    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        found = [
            f"{section}.{key}"
            for section, key in SECRET_SETTINGS
            if isinstance(data.get(section), dict) and key in data[section]
        ]
        if found:
            names = ", ".join(f"RW_{s.upper()}__{k.upper()}" for s, k in SECRET_SETTINGS)
            raise ConfigFileError(
                f"{file_path} sets {', '.join(found)}: secrets come from the environment only ({names})"
            )
        return data


class KafkaSettings(BaseModel):
    url: str = ""
    events_topic: str = "rw.events"
    dead_letter_topic: str = "rw.events.dlq"
    alerts_topic: str = "rw.alerts"
    registry_topic: str = "rw.registry"
    case_events_topic: str = "rw.case-events"
    partitions: int = Field(4, ge=1)
    app_id: str = "recallwatch"
    rebalance_timeout_s: int = 5
    session_timeout_s: int = 6
    heartbeat_interval_s: int = 1
    one_record_per_batch: bool = True
    fetch_max_wait_ms: int = Field(100, ge=1, le=30_000)


class ClickHouseSettings(BaseModel):
    url: str = ""
    data_dir: Path = Path(".recallwatch/clickhouse")
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


class WorkerSettings(BaseModel):
    data_dir: Path = Path(".recallwatch/worker")
    batch_max: int = Field(2000, ge=1)
    batch_within_s: float = Field(0.05, gt=0)
    commit_interval_s: float = Field(2.8, gt=0)
    flush_interval_s: float = Field(0.5, gt=0)
    flush_max_events: int = Field(20_000, ge=1)


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = "http://127.0.0.1:8000"
    # API key -> role. Secrets: set from the environment only (RW_API__KEYS as a JSON object).
    keys: dict[str, str] = Field(default_factory=dict, repr=False)
    anonymous_role: str = "viewer"  # "" = every request needs a key
    contact_roles: list[str] = Field(default_factory=lambda: ["operations", "admin"])

    def access_policy(self) -> AccessPolicy:
        return AccessPolicy(
            keys=dict(self.keys),
            anonymous_role=self.anonymous_role or None,
            contact_roles=frozenset(self.contact_roles),
        )


class SlackSettings(BaseModel):
    token: SecretStr | None = None
    signing_secret: SecretStr | None = None  # verifies button clicks; without it they are refused
    channel: str = "#quality-alerts"
    base_url: str = ""


class CaseSettings(BaseModel):
    risk_matrix: Path = Path(__file__).with_name("risk_matrix.toml")
    escalate_after_s: float = Field(86_400.0, ge=0)
    escalation_check_s: float = Field(60.0, gt=0)
    command_wait_s: float = Field(5.0, ge=0)


class DetectorSpec(BaseModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DetectionSettings(BaseModel):
    bucket_s: int = Field(86_400, gt=0)
    windows_s: list[int] = Field(default_factory=lambda: [604_800, 2_592_000])
    cooldown_buckets: int = 14
    max_catchup_buckets: int = 400
    max_event_lead_s: int = Field(DEFAULT_MAX_EVENT_LEAD_S, ge=0)
    max_failure_modes: int = Field(DEFAULT_MAX_FAILURE_MODES, ge=1)
    detectors: list[DetectorSpec] = Field(default_factory=list)

    def to_core(self) -> DetectionConfig:
        """The core's plain config, versioned by a hash of everything that changes detection."""
        detectors = tuple((d.name, dict(d.params)) for d in self.detectors) or None
        body = self.model_dump(mode="json")
        version = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
        kwargs: dict[str, Any] = {}
        if detectors:
            kwargs["detectors"] = detectors
        return DetectionConfig(
            bucket_s=self.bucket_s,
            windows_s=tuple(self.windows_s),
            cooldown_buckets=self.cooldown_buckets,
            max_catchup_buckets=self.max_catchup_buckets,
            max_event_lead_s=self.max_event_lead_s,
            max_failure_modes=self.max_failure_modes,
            version=version,
            **kwargs,
        )


class RankingSettings(BaseModel):
    # A file written by `recallwatch train-ranker`; empty: alerts are not ranked.
    ranker_file: str = str(Path(__file__).parent / "ranker" / "alarm-ranker-v1.json")
    timeout_s: float = Field(5.0, gt=0)


class PeerSettings(BaseModel):
    # A backtest config (engine = "peers"): its detector, parameters and windows run live on the
    # worker's leader. Empty: no peer scan.
    config_file: str = str(Path(__file__).with_name("backtest.toml"))
    interval_s: float = Field(30.0, gt=0)
    cooldown_days: float = Field(90.0, gt=0)


class SimulatorSettings(BaseModel):
    seed: int = 7
    speed: float = Field(1.0, gt=0)
    defect_onset_day: float = 25.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RW_", env_nested_delimiter="__", extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    slack: SlackSettings = SlackSettings()
    cases: CaseSettings = CaseSettings()
    detection: DetectionSettings = DetectionSettings()
    ranking: RankingSettings = RankingSettings()
    peers: PeerSettings = PeerSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _cells_fit_one_record(self) -> Settings:
        # A cell's changelog snapshot that does not fit one Kafka record is refused by the producer
        # on every flush, and its partition is never acked again: refuse such settings at startup.
        # Measuring builds every configured detector, so a bad one is reported here, as a setting.
        try:
            bound = snapshot_bound_bytes(self.detection.to_core(), self.kafka.partitions)
        except TypeError as exc:  # a parameter the detector does not take, or of the wrong type
            raise ValueError(f"detection.detectors: {exc}") from None
        if bound > SNAPSHOT_BUDGET_BYTES:
            raise ValueError(
                f"detection settings allow a cell snapshot of up to {bound:,} bytes, more than the "
                f"{SNAPSHOT_BUDGET_BYTES:,} that fit one changelog record: lower "
                "detection.max_failure_modes, or the windows' length in buckets"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [DEFAULTS_FILE]
        user_file = os.environ.get("RW_CONFIG_FILE")
        if user_file:
            files.append(Path(user_file))
        # Later files win in TomlConfigSettingsSource's deep merge order.
        return (init_settings, env_settings, _TomlWithoutSecrets(settings_cls, toml_file=files))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; keyword overrides win over env and files (used by the CLI and tests)."""
    return Settings(**overrides)
