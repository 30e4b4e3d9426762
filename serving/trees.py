"""A served XGBoost model compiled to flat numpy arrays: score and reasons of one row in one pass.

Why: profiling the fraud endpoint showed that a single-row ``inplace_predict`` plus a
per-request ``DMatrix`` for ``pred_contribs`` were most of the model's share of a decision, almost
all of it per-call overhead rather than arithmetic: the model is a few hundred shallow trees.
Walking all trees *at once* (one numpy step per tree level) gives the margin and the
Saabas contributions — exactly what ``pred_contribs(approx_contribs=True)`` computes: per tree,
the change of the cover-weighted node mean along the decision path is credited to the split
feature, the root means plus the base margin form the bias — cheaply enough that every decision gets its
reasons inline (bench/score_fastpath.py). ``tests/test_serving_trees.py`` checks score and contributions
against XGBoost itself on rows with missing values.

Only what the project trains is compiled (``gbtree`` + ``binary:logistic``, numerical splits);
anything else returns ``None`` from :func:`compile_booster` and the caller keeps XGBoost.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompiledTrees:
    """All trees of one booster as flat node arrays (leaves loop onto themselves).

    One level of every tree is 7 numpy calls: a node reads its input from a per-call vector laid
    out as [x with missing → -inf, x with missing → +inf, -inf], at ``slot`` (its split feature,
    offset by n_features when a missing value goes right; leaves read the last -inf), so
    "missing goes to the default branch" and "leaves stay put" are the same comparison
    ``value >= threshold`` as every other split (XGBoost goes left when x < threshold, compared in
    float32). The visited nodes are kept and the contributions summed once at the end."""

    n_features: int
    base_margin: float
    depth: int  # levels to step: the deepest leaf
    roots: np.ndarray  # int64 (n_trees,)
    feature: np.ndarray  # int64 (n_nodes,) split feature (0 for leaves: their step adds nothing)
    slot: np.ndarray  # int64 (n_nodes,) where the node reads its input (see the class docstring)
    threshold: np.ndarray  # float32 (n_nodes,) go right when the input >= threshold (leaves: 0)
    children: np.ndarray  # int64 (2 * n_nodes,) [left, right] per node (a leaf: itself twice)
    mean: np.ndarray  # float64 (n_nodes,) cover-weighted mean of the leaves below (leaf: its value)
    root_mean_sum: float

    def predict(self, row: np.ndarray) -> tuple[float, np.ndarray]:
        """Probability and contributions (``n_features`` + bias, in log-odds) of one row."""
        x = np.asarray(row, dtype=np.float32).reshape(-1)  # XGBoost compares in float32
        missing = np.isnan(x)
        inputs = np.concatenate((np.where(missing, -np.inf, x), np.where(missing, np.inf, x), _LEAF_INPUT))
        node = self.roots
        path = [node]
        for _ in range(self.depth):
            right = inputs[self.slot[node]] >= self.threshold[node]
            node = self.children[2 * node + right]
            path.append(node)
        parents, reached = np.concatenate(path[:-1]), np.concatenate(path[1:])
        contribs = np.bincount(self.feature[parents], weights=self.mean[reached] - self.mean[parents],
                               minlength=self.n_features + 1)
        margin = self.base_margin + float(self.mean[node].sum())
        contribs[self.n_features] = self.base_margin + self.root_mean_sum
        return 1.0 / (1.0 + math.exp(-margin)), contribs


_LEAF_INPUT = np.array([-np.inf], dtype=np.float32)  # what a leaf reads: never >= its threshold 0


def _base_score(raw: str) -> float:
    """``learner_model_param.base_score``: ``"5E-1"`` or, since XGBoost 3, ``"[5E-1]"``."""
    values = re.findall(r"[-+0-9.eE]+", raw)
    if len(values) != 1:
        raise ValueError(f"expected one base score, got {raw!r}")
    return float(values[0])


def compile_booster(booster: object) -> CompiledTrees | None:
    """Compile a ``binary:logistic`` gbtree; ``None`` (keep XGBoost) for anything else."""
    model = json.loads(bytes(booster.save_raw("json")))["learner"]  # type: ignore[attr-defined]
    objective = model["objective"]["name"]
    gb = model["gradient_booster"]
    if objective != "binary:logistic" or gb.get("name") != "gbtree":
        log.info("not compiling a %s/%s model: scored by XGBoost", gb.get("name"), objective)
        return None
    trees = gb["model"]["trees"]
    n_features = int(model["learner_model_param"]["num_feature"])
    p = _base_score(model["learner_model_param"]["base_score"])
    base_margin = math.log(p / (1.0 - p))
    feature, slot, threshold, left, right, mean, roots = [], [], [], [], [], [], []
    depth, offset = 0, 0
    for tree in trees:
        if any(tree.get("split_type", [])) or tree.get("categories"):
            log.info("not compiling a model with categorical splits: scored by XGBoost")
            return None
        lc, rc = np.asarray(tree["left_children"]), np.asarray(tree["right_children"])
        cond = np.asarray(tree["split_conditions"], dtype=np.float64)
        hess = np.asarray(tree["sum_hessian"], dtype=np.float64)
        leaf = lc == -1
        n = len(lc)
        means = np.zeros(n)
        levels = np.zeros(n, dtype=np.int64)
        order = [0]  # parents before children, then fill means bottom-up
        for nid in order:
            if not leaf[nid]:
                levels[lc[nid]] = levels[rc[nid]] = levels[nid] + 1
                order.extend((int(lc[nid]), int(rc[nid])))
        for nid in reversed(order):
            means[nid] = cond[nid] if leaf[nid] else (
                (means[lc[nid]] * hess[lc[nid]] + means[rc[nid]] * hess[rc[nid]]) / hess[nid])
        depth = max(depth, int(levels.max()))
        idx = np.arange(n) + offset
        roots.append(offset)
        left.append(np.where(leaf, idx, lc + offset))
        right.append(np.where(leaf, idx, rc + offset))
        split = np.asarray(tree["split_indices"])
        feature.append(np.where(leaf, 0, split))
        default_right = ~np.asarray(tree["default_left"], dtype=bool)
        slot.append(np.where(leaf, 2 * n_features, split + n_features * default_right))
        threshold.append(np.where(leaf, 0.0, cond).astype(np.float32))
        mean.append(means)
        offset += n
    roots_a = np.asarray(roots, dtype=np.int64)
    mean_a = np.concatenate(mean)
    children = np.column_stack([np.concatenate(left), np.concatenate(right)]).reshape(-1).astype(np.int64)
    return CompiledTrees(
        n_features=n_features, base_margin=base_margin, depth=depth, roots=roots_a,
        feature=np.concatenate(feature).astype(np.int64), slot=np.concatenate(slot).astype(np.int64),
        threshold=np.concatenate(threshold), children=children, mean=mean_a,
        root_mean_sum=float(mean_a[roots_a].sum()))
