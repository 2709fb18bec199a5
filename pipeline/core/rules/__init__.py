"""Routing rules: YAML routes under rules/routes, validated, compiled to vectorised predicates, hot-reloaded.

Public API: `load_rules` / `check_rules` -> `RuleSet`; `Router(ruleset, hmac_secret).route(events)`
-> `RouteResult`; `RulesWatcher` for hot reload; `WebhookSender` (in `pipeline.core.rules.webhook`)
for webhook targets; `run_tests` (in `pipeline.core.rules.testing`) for the test files beside the rules.
"""

from pipeline.core.rules.loader import CompiledRoute, RulesError, RuleSet, check_rules, load_rules
from pipeline.core.rules.reload import RulesWatcher
from pipeline.core.rules.router import Router, RouteResult

__all__ = ["CompiledRoute", "RouteResult", "Router", "RuleSet", "RulesError", "RulesWatcher", "check_rules", "load_rules"]
