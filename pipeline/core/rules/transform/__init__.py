"""Vectorised transforms of routed events: reshape, desensitise and split, column by column.

A route's transform is a list of steps, each a mapping with one operation key (see
`schema.STEP_DOCS`) and optionally `if_missing: dead_letter|skip`. Steps run on a `Frame`,
a lazy view of the matched rows of the batch: a column is copied only when a step reads
it or when the result is built, so `pick` of 3 fields out of 60 costs 3 columns.
Events that lack a field a step needs leave the frame as dead letters with the reason.

Modules: `frame` (the lazy column view of the matched rows, text helpers, `TransformError`),
`steps` (one class per operation: pick, drop, rename, set, template, hmac, mask, coarsen,
bucket, split; `Transform`, deterministic ids), `compiler` (the YAML list of steps to a
`Transform`, every error with its place). Import from this package, not from its modules.
"""

from pipeline.core.rules.transform.compiler import (
    TransformGroupError,
    compile_transform,
    flat_steps,
)
from pipeline.core.rules.transform.frame import (
    METRES_PER_DEGREE,
    MISSING_FIELD,
    SPLIT_ARRAY_WIDTH,
    WRONG_TYPE,
    Frame,
    TransformError,
    as_text,
    text_of,
)
from pipeline.core.rules.transform.steps import (
    Bucket,
    Coarsen,
    Context,
    Drop,
    Hmac,
    Mask,
    Pick,
    Rename,
    SetConstants,
    Split,
    Step,
    Template,
    Transform,
    _mask_text,
    coarsen_coordinates,
    deterministic_ids,
)

__all__ = [
    "METRES_PER_DEGREE", "MISSING_FIELD", "SPLIT_ARRAY_WIDTH", "WRONG_TYPE", "Bucket", "Coarsen", "Context",
    "Drop", "Frame", "Hmac", "Mask", "Pick", "Rename", "SetConstants", "Split", "Step", "Template", "Transform",
    "TransformError", "TransformGroupError", "_mask_text", "as_text", "coarsen_coordinates", "compile_transform",
    "deterministic_ids", "flat_steps", "text_of",
]
