"""Box-set classifiers with the scikit-learn estimator API.

Every model here exposes ``boxes_`` (a :class:`~engine.boxes.BoxSet`) and ``min_votes_`` once
fitted, so ``Catalog.select(model.boxes_, model.min_votes_)`` applies it to a whole catalog
through the block index, and ``model.boxes_.to_sql(...)`` gives the same rows in SQL.

- :class:`DecisionBranchClassifier` and :class:`DecisionBranchEnsemble` (numba)
- :class:`TreeBoxes` and :class:`ForestBoxes`: scikit-learn's tree and forest, their positive
  leaves turned into boxes

:mod:`~engine.learn.refine` assembles a refine round's training set (labels, sampled negatives)
and fits one of these on it; :mod:`~engine.learn.guide` is the linear guide that relabels the
sample and sets the vote threshold. This package imports numpy, numba, scikit-learn,
:mod:`engine.boxes` and :mod:`engine.limits`; :mod:`~engine.learn.refine` also reads the block
index (:mod:`engine.index.query`).
"""

from .base import NotFittedError
from .models import DecisionBranchClassifier, DecisionBranchEnsemble, feature_subsets
from .trees import ForestBoxes, TreeBoxes

__all__ = [
    "DecisionBranchClassifier",
    "DecisionBranchEnsemble",
    "ForestBoxes",
    "NotFittedError",
    "TreeBoxes",
    "feature_subsets",
]
