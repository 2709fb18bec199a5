"""Event patterns with EventBridge semantics, compiled once into vectorised predicates.

A pattern is a mapping from paths to lists of conditions: AND across fields, OR within a
list, an array in the event matches if any element does. Types are strict: a number
matches only numbers, a string only strings, and a missing field matches only
`exists: false`. `$or` / `any`, `all` and `not` compose patterns. Geo operators test
location objects (`data.location` = columns `location.lat` and `location.lon`).

Each leaf runs over a whole column: numeric columns with numpy comparisons, string
columns on their unique values (indexed back to rows), so cost grows with unique values,
not with events.

Modules: `leaves` (one condition on one field's value, each vectorised over a column),
`tree` (fields and composition: AND, OR, NOT, arrays of objects), `compiler` (YAML/JSON
pattern to nodes with precise errors, contradictions, the documented operators). Import
from this package, not from its modules.
"""

from pipeline.core.rules.patterns.compiler import (
           OPERATORS,
           PatternGroupError,
           compile_pattern,
           contradictions,
)
from pipeline.core.rules.patterns.leaves import AnythingBut, Exists, Leaf, Loc, PatternError
from pipeline.core.rules.patterns.tree import (
           MATCH_ALL,
           AllOf,
           AnyOf,
           FieldCondition,
           Node,
           NoneOf,
           lookup,
)

__all__ = ["MATCH_ALL", "OPERATORS", "AllOf", "AnyOf", "AnythingBut", "Exists", "FieldCondition", "Leaf", "Loc",
           "Node", "NoneOf", "PatternError", "PatternGroupError", "compile_pattern", "contradictions", "lookup"]
