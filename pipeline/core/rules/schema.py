"""The rules file format: typed models with a description, default and example for every field.

A file under `rules/routes/` holds `routes:`, a list of `Route`s. `match` (an event
pattern, see `patterns/`) and `transform` (a list of steps, see `transform/`) are
validated by their compilers, which report the exact place of a mistake; everything else
is validated here. `rules/README.md` is generated from these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

DEFAULT_HMAC_KEY_ENV = "PIPELINE_HMAC_SECRET"
DEFAULT_DEAD_LETTER_TOPIC = "pipeline.dlq"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"
ROUTE_NAME = r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*$"
PATH = re.compile(r"^(data(\.[A-Za-z0-9_\-]+)+|[a-z0-9]{1,20})$")
OBJECT_PREFIX = r"^[A-Za-z0-9][A-Za-z0-9._\-/]*/$"
#: What each name pattern means, for errors in words instead of a regular expression.
PATTERN_WORDS: dict[str, str] = {
    ENV_NAME: "an environment variable name is capitals, digits and '_' (e.g. FINANCE_KEY)",
    TOPIC_NAME: "a topic name is 1 to 249 letters, digits, '.', '_' or '-'",
    ROUTE_NAME: "a route name is lower-case words of letters, digits and '-' joined by '.' (e.g. dept.finance)",
    OBJECT_PREFIX: "an object prefix is letters, digits, '.', '_', '-' and '/', starting with a letter or digit "
                   "and ending in '/' (e.g. routes/finance/)",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
class TopicTarget(_Model):
    """A Kafka topic: each event is produced as a CloudEvent in binary content mode, key = partitionkey."""

    topic: str = Field(..., pattern=TOPIC_NAME, description="Topic name; must start with the route prefix (`route.`) or be a dead-letter topic (`pipeline.dlq`, `*.dlq`).",
                       examples=["route.dept.finance"])

    @property
    def kind(self) -> str:
        return "topic"

    def describe(self) -> str:
        return f"topic:{self.topic}"


class WebhookTarget(_Model):
    """An HTTP endpoint: one POST per event (CloudEvents HTTP binary mode), signed with HMAC-SHA256."""

    webhook: str = Field(..., description="http(s) URL the events are POSTed to.",
                         examples=["https://crm.example.com/hooks/vehicle-alerts"])
    secret_env: str | None = Field(default=None, pattern=ENV_NAME,
                                   description="Environment variable holding the signing key; the `X-Pipeline-Signature` header carries `t=<unix s>,v1=<hex HMAC-SHA256 of '<t>.<body>'>`. Left out: requests are not signed. Named but not set in the worker's environment: that rules version is rejected when it loads (a reload keeps the last good one).",
                                   examples=["CRM_WEBHOOK_SECRET"])
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="Per-request timeout in seconds; a slow endpoint is retried, then dead-lettered, and never holds up other routes.",
                             examples=[2.5])
    max_in_flight: int = Field(default=8, ge=1, le=256, description="Requests in flight at once for this target.", examples=[16])
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (no secrets: use `secret_env`).",
                                    examples=[{"X-Tenant": "fleet-emea"}])

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value

    @property
    def kind(self) -> str:
        return "webhook"

    def describe(self) -> str:
        return f"webhook:{self.webhook}"


class ObjectTarget(_Model):
    """An object-store prefix: events are written as JSON lines under it by the object sink."""

    object: str = Field(..., pattern=OBJECT_PREFIX,
                        description="Key prefix in the pipeline's bucket, ending in `/`.",
                        examples=["routes/finance/"])

    @field_validator("object")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if ".." in value.split("/") or "//" in value:
            raise ValueError(f"prefix {value!r} has an empty or '..' segment")
        return value

    @property
    def kind(self) -> str:
        return "object"

    def describe(self) -> str:
        return f"object:{self.object}"


TARGET_KINDS = {"topic": TopicTarget, "webhook": WebhookTarget, "object": ObjectTarget}


def _target_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return getattr(value, "kind", None)
    if isinstance(value, dict):
        kinds = [k for k in TARGET_KINDS if k in value]
        return kinds[0] if len(kinds) == 1 else None
    return None


Target = Annotated[
    Annotated[TopicTarget, Tag("topic")] | Annotated[WebhookTarget, Tag("webhook")] | Annotated[ObjectTarget, Tag("object")],
    Discriminator(_target_kind, custom_error_type="target_kind",
                  custom_error_message="a target needs exactly one of `topic`, `webhook` or `object`"),
]


class RetryPolicy(_Model):
    """How often and how patiently a route's deliveries are retried before dead-lettering."""

    attempts: int = Field(default=3, ge=1, le=20, description="Delivery attempts per event, the first included (1 = no retry).", examples=[5])
    backoff_ms: int = Field(default=200, ge=0, le=600_000, description="Wait before the first retry; doubles after each retry.", examples=[500])
    max_backoff_ms: int = Field(default=10_000, ge=0, le=3_600_000, description="Longest wait between two attempts.", examples=[30_000])

    @model_validator(mode="after")
    def _bounds(self) -> RetryPolicy:
        if self.max_backoff_ms < self.backoff_ms:
            raise ValueError(f"max_backoff_ms {self.max_backoff_ms} is below backoff_ms {self.backoff_ms}")
        return self

    def delay_ms(self, retry: int) -> int:
        """Wait before retry number `retry` (1-based): exponential, capped."""
        return int(min(self.max_backoff_ms, self.backoff_ms * (2 ** max(retry - 1, 0))))


# --------------------------------------------------------------------------------------------
# Data policy
# --------------------------------------------------------------------------------------------
class DataPolicy(_Model):
    """What personal data a route may emit; checked against its transform when rules load."""

    vin: Literal["allowed", "pseudonym", "forbidden"] = Field(
        "allowed", description="`allowed`: raw VINs may leave; `pseudonym`: only keyed hashes (`hmac`) or masks; `forbidden`: nothing derived from the VIN.",
        examples=["pseudonym"])
    vin_fields: list[str] = Field(
        default_factory=lambda: ["data.vin", "subject", "partitionkey", "source"],
        description="Fields that carry the VIN in the input (`source` is `/vehicles/<VIN>`).",
        examples=[["data.vin"]])
    location: Literal["allowed", "forbidden"] = Field(default="allowed", description="`forbidden`: no coordinates at all.", examples=["forbidden"])
    location_precision_m: float = Field(default=0.0, ge=0, description="Coordinates must be coarsened to at least this many metres (0 = exact allowed).",
                                        examples=[1000])
    location_fields: list[str] = Field(
        default_factory=lambda: ["data.location", "data.start", "data.end", "data.cell_lat", "data.cell_lon"],
        description="Location objects (with `.lat`/`.lon`) and coordinate fields in the input.",
        examples=[["data.location", "data.home"]])
    forbidden_fields: list[str] = Field(default_factory=list, description="Fields that must not be in the output at all.",
                                        examples=[["data.trip_id"]])
    mask_max_visible: int = Field(default=4, ge=0, le=16, description="A masked VIN counts as a pseudonym if at most this many characters stay visible.",
                                  examples=[3])

    @field_validator("vin_fields", "location_fields", "forbidden_fields")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not PATH.match(path):
                raise ValueError(f"{path!r} is not a field path (an attribute name or data.<field>)")
        return value


# --------------------------------------------------------------------------------------------
# Transform step arguments (the mapping forms; shorthands are described in `transform.py`)
# --------------------------------------------------------------------------------------------
class HmacSpec(_Model):
    """Replace a value by its keyed hash: a stable pseudonym that cannot be reversed without the key."""

    field: str = Field(..., description="Field to pseudonymise.", examples=["data.vin"])
    to: str | None = Field(default=None, description="Write the pseudonym here instead (the source is then dropped).", examples=["data.vehicle_ref"])
    key_env: str = Field(default=DEFAULT_HMAC_KEY_ENV, pattern=ENV_NAME, description="Environment variable with the HMAC-SHA256 key.", examples=["FINANCE_PSEUDONYM_KEY"])
    length: int = Field(default=32, ge=8, le=64, description="Hex characters kept of the digest.", examples=[16])
    prefix: str = Field(default="", max_length=16, description="Text put before the hex digest.", examples=["veh-"])


class MaskSpec(_Model):
    """Hide all but the first/last characters of a string."""

    field: str = Field(..., description="String field to mask.", examples=["data.vin"])
    to: str | None = Field(default=None, description="Write the masked text here instead (the source is then dropped).", examples=["data.vin_masked"])
    keep_first: int = Field(default=0, ge=0, le=64, description="Leading characters left visible.", examples=[3])
    keep_last: int = Field(default=4, ge=0, le=64, description="Trailing characters left visible.", examples=[4])
    char: str = Field(default="*", min_length=1, max_length=1, description="Replacement character.", examples=["#"])


class CoarsenSpec(_Model):
    """Snap coordinates to a grid so they locate an area, not a person."""

    field: str | None = Field(default=None, description="Location object with `.lat` and `.lon`.", examples=["data.location"])
    lat: str | None = Field(default=None, description="Latitude field (with `lon`, instead of `field`).", examples=["data.cell_lat"])
    lon: str | None = Field(default=None, description="Longitude field (with `lat`).", examples=["data.cell_lon"])
    precision_m: float | None = Field(default=None, gt=0, le=1_000_000, description="Grid size in metres (north-south; east-west scaled by latitude).", examples=[1000])
    decimals: int | None = Field(default=None, ge=0, le=6, description="Round degrees to this many decimals instead (2 ≈ 1.1 km).", examples=[2])

    @model_validator(mode="after")
    def _one_form(self) -> CoarsenSpec:
        if (self.field is None) == (self.lat is None and self.lon is None):
            raise ValueError("give either `field` (a location object) or both `lat` and `lon`")
        if self.field is None and (self.lat is None or self.lon is None):
            raise ValueError("`lat` and `lon` go together")
        if (self.precision_m is None) == (self.decimals is None):
            raise ValueError("give exactly one of `precision_m` or `decimals`")
        return self

    def effective_precision_m(self) -> float:
        """The grid size in metres this step guarantees (for data policies)."""
        if self.precision_m is not None:
            return float(self.precision_m)
        return 111_320.0 * 10.0 ** -(self.decimals or 0)


class BucketSpec(_Model):
    """Replace a number by the bucket it falls in: fixed width, or labelled edges."""

    field: str = Field(..., description="Numeric field.", examples=["data.energy_kwh"])
    to: str | None = Field(default=None, description="Write the bucket here instead (the source is then dropped).", examples=["data.energy_band"])
    width: float | None = Field(default=None, gt=0, description="Bucket width; the value becomes the bucket's lower bound (offset + k*width).", examples=[5])
    offset: float = Field(default=0.0, description="Where buckets start (with `width`).", examples=[0])
    edges: list[float] | None = Field(default=None, min_length=1, description="Strictly increasing bucket edges (with `labels`).", examples=[[10, 50]])
    labels: list[str] | None = Field(default=None, description="One label per bucket: len(edges) + 1 (below the first edge, between edges, from the last edge).",
                                     examples=[["small", "medium", "large"]])

    @model_validator(mode="after")
    def _one_form(self) -> BucketSpec:
        if (self.width is None) == (self.edges is None):
            raise ValueError("give exactly one of `width` or `edges`")
        if self.edges is not None:
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise ValueError(f"edges must be strictly increasing, got {self.edges}")
            if self.labels is None or len(self.labels) != len(self.edges) + 1:
                raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} labels")
        elif self.labels is not None:
            raise ValueError("`labels` go with `edges`")
        return self


class SplitSpec(_Model):
    """Turn one event into several: one per element of an array, or one per listed field."""

    field: str | None = Field(default=None, description="Array field: one event per element (an empty array yields none).", examples=["data.dtc_codes"])
    by: list[str] | None = Field(default=None, min_length=1, description="Fields (or objects): one event per field that is present, carrying it under `to`.",
                                 examples=[["data.start", "data.end"]])
    to: str | None = Field(default=None, description="Where the element (or the field) goes; default: the array field itself.", examples=["data.location"])
    index_to: str | None = Field(default=None, description="Optional field for the part's name (`by`) or position (`field`).", examples=["data.point"])

    @model_validator(mode="after")
    def _one_form(self) -> SplitSpec:
        if (self.field is None) == (self.by is None):
            raise ValueError("give exactly one of `field` (an array) or `by` (a list of fields)")
        if self.by is not None and self.to is None:
            raise ValueError("`by` needs `to`: the field each part is carried under")
        return self


Scalar = str | int | float | bool | None

#: Transform operations: argument type (for the reference) and what they do.
STEP_DOCS: dict[str, tuple[str, str, str]] = {
    "pick": ("list of paths", "Keep only these data fields (objects keep everything below them); attributes stay.",
             "pick: [data.vin, data.dtc_count]"),
    "drop": ("list of paths", "Remove data fields or optional attributes (`subject`, `partitionkey`, extensions).",
             "drop: [data.trip_id, partitionkey]"),
    "rename": ("mapping path -> path", "Move fields (objects move with everything below them).",
               "rename: {data.soc_pct: data.battery_pct}"),
    "set": ("mapping path -> constant", "Set constants (data fields, `type`, `source`, `subject` or extensions).",
            "set: {source: /pipeline/routes/finance, data.schema: billing.v1}"),
    "template": ("mapping path -> text", "Build strings from `{path}` variables of the event (`{{` and `}}` are literal braces); numbers as JSON text, booleans `true`/`false`. With `if_missing: skip` the field is left out where a variable is missing.",
                 'template: {data.summary: "{data.dtc_count} fault codes on {subject}"}'),
    "hmac": ("path, list of paths, or HmacSpec", "Keyed hash (HMAC-SHA256 of the value's text) pseudonym, stable per key, not reversible; a path or list hashes in place.",
             "hmac: [data.vin, subject, partitionkey]"),
    "mask": ("MaskSpec", "Hide all but the first/last characters of a string.", "mask: {field: data.vin, keep_last: 4}"),
    "coarsen": ("CoarsenSpec", "Snap coordinates to a grid.", "coarsen: {field: data.location, precision_m: 1000}"),
    "bucket": ("BucketSpec", "Replace a number by its bucket.", "bucket: {field: data.energy_kwh, width: 5}"),
    "split": ("SplitSpec", "One event becomes several (ids stay deterministic by part index).",
              "split: {by: [data.start, data.end], to: data.location, index_to: data.point}"),
}
STEP_OPTIONS: dict[str, tuple[str, str]] = {
    "if_missing": ("dead_letter", "When a field the step needs is missing: `dead_letter` (to the route's dead-letter target, reason `missing_field`) or `skip` the step for that event."),
}


# --------------------------------------------------------------------------------------------
# Routes and files
# --------------------------------------------------------------------------------------------
class Route(_Model):
    """One route: which events (`match`), in what shape (`transform`), to where (`to`)."""

    name: str = Field(..., pattern=ROUTE_NAME, description="Unique route name: in ids, metrics, logs and dead letters.",
                      examples=["dept.finance"])
    description: str = Field(default="", description="What the route is for and who consumes it.", examples=["Billing-relevant energy for finance"])
    enabled: bool = Field(default=True, description="`false` keeps the route in the file but out of service.", examples=[False])
    default: bool = Field(default=False, description="The route for events no other route matches (at most one; it has no `match`).",
                          examples=[True])
    match: dict[str, Any] | None = Field(default=None, description="Event pattern (EventBridge semantics plus all/any/not and geo operators); omitted = every event.",
                                         examples=[{"type": ["fleet.charging.ended"], "data": {"energy_kwh": [{"numeric": [">", 0]}]}}])
    transform: list[dict[str, Any]] = Field(default_factory=list, min_length=1, description="Steps applied in order to matched events (see Transform steps).",
                                            examples=[[{"pick": ["data.vin", "data.energy_kwh"]}, {"hmac": "data.vin"}]])
    to: list[Target] = Field(..., min_length=1, description="Targets every transformed event is delivered to.",
                             examples=[[{"topic": "route.dept.finance"}]])
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy of this route's deliveries.",
                               examples=[{"attempts": 5, "backoff_ms": 500, "max_backoff_ms": 30000}])
    dead_letter: Target = Field(default_factory=lambda: TopicTarget(topic=DEFAULT_DEAD_LETTER_TOPIC),
                                description="Where events go that cannot be transformed or delivered, with the reason.",
                                examples=[{"topic": "route.dept.finance.dlq"}])
    policy: DataPolicy | None = Field(default=None, description="Data policy the transform must satisfy (checked at load).",
                                      examples=[{"vin": "pseudonym", "location": "forbidden"}])

    @model_validator(mode="after")
    def _default_has_no_match(self) -> Route:
        if self.default and self.match is not None:
            raise ValueError("the default route takes the events no route matches: remove `match`")
        return self


class RulesFile(_Model):
    """A file under `rules/routes/`."""

    routes: list[Route] = Field(..., min_length=1, description="The routes this file defines.",
                                examples=[[{"name": "dept.finance", "match": {"type": ["fleet.charging.ended"]},
                                            "to": [{"topic": "route.dept.finance"}]}]])
