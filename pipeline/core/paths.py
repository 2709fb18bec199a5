"""Names every layer shares: where the repository's rules and catalog live, and the fixed topics."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DLQ_TOPIC = "pipeline.dlq"  #: the dead-letter topic, unless TOPIC_DLQ says otherwise
ROUTE_TOPIC_PREFIX = "route."  #: prefix of every route's topic (TOPIC_PREFIX_ROUTE)
