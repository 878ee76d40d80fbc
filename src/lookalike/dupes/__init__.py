"""Copies and near-duplicates: find every copy of a picture, leave look-alikes alone, act on them safely.

- `verify`: is B a copy of A? (local features + affine RANSAC + a pixel check, calibrated score)
- `groups`: groups of copies in a whole collection (index candidates, verification, union-find)
- `decisions`: "not duplicates" pairs and resolved groups, kept across runs by content hash
- `actions`: keep policies, move / delete / symlink plans, manifests and undo
"""

from .actions import Action, Plan, UndoReport, apply_plan, choose_keeper, plan_actions, undo
from .decisions import Decisions
from .groups import DupesReport, Evidence, FeatureCache, Group, candidate_pairs, copies_of, find_groups
from .verify import Comparison, Features, compare, compare_features, extract

__all__ = ["Action", "Comparison", "Decisions", "DupesReport", "Evidence", "FeatureCache", "Features", "Group",
           "Plan", "UndoReport", "apply_plan", "candidate_pairs", "choose_keeper", "compare", "compare_features",
           "copies_of", "extract", "find_groups", "plan_actions", "undo"]
