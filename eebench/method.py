"""The method plugin API: everything a method file in ``methods/`` may import, in one place.

A method is a file in ``methods/`` with a subclass of :class:`ExitMethod` under
:func:`register_method`: its name, paper, parameters with their defaults and constraints, the grid a
sweep expands, a tiny test configuration, and :meth:`ExitMethod.fit`, which trains on the cached
features of an :class:`ExitTask` and returns a :class:`FittedMethod` whose ``predict`` gives one
:class:`OperatingPoint` per setting of its trade-off knob. It imports from this module only (``from
eebench.method import ...``; ``tests/test_layout.py`` checks it), in the manner of ``lm_eval.api``
and ``benchopt.BaseSolver``: the harness's modules behind these names may move without a plugin
noticing. What is here: the plugin contract (:mod:`eebench.harness.method`), the training helpers
and the shared IM stage's schedule (:mod:`eebench.harness.training`), the MSDNet threshold policy
(:mod:`eebench.harness.exit_policy`), the features a method reads (:class:`SplitFeatures`), Mul-Add
counting of a module (:func:`module_muladds`), parameter constraints (:mod:`eebench.params`) and
the errors a method may raise (:mod:`eebench.errors`).
"""
from eebench.errors import ConfigError, NonFiniteLossError
from eebench.harness.costs import module_muladds
from eebench.harness.exit_policy import (Q_GRID, ExitSteps, ThresholdPolicy, apply_thresholds, ims_policy,
                                         msdnet_thresholds, thresholds_from_counts)
from eebench.harness.features import SplitFeatures
from eebench.harness.method import (ExitMethod, ExitRule, ExitTask, FittedMethod, OperatingPoint, pack,
                                    register_method, unpack)
from eebench.harness.training import (SGD_CONSTRAINTS, SGD_DEFAULTS, BestState, IMStack, SGDSchedule, StackedIMs,
                                      all_exit_logits, check_finite, cycle_minibatches, eval_mode, exit_probs,
                                      im_logits, im_val_error, minibatches, per_exit_ce, train_ims)
from eebench.params import (AT_LEAST_ONE, FRACTION, MOMENTUM, NON_NEGATIVE, OPEN_UNIT, POSITIVE, Constraint, Each,
                            OneOf, Optional, Range)

__all__ = [
    # the contract
    "ExitMethod", "ExitRule", "ExitTask", "FittedMethod", "OperatingPoint", "register_method", "pack", "unpack",
    "SplitFeatures",
    # training helpers
    "SGD_CONSTRAINTS", "SGD_DEFAULTS", "BestState", "IMStack", "SGDSchedule", "StackedIMs", "all_exit_logits",
    "check_finite", "cycle_minibatches", "eval_mode", "exit_probs", "im_logits", "im_val_error", "minibatches",
    "per_exit_ce", "train_ims",
    # the threshold policy
    "Q_GRID", "ExitSteps", "ThresholdPolicy", "apply_thresholds", "ims_policy", "msdnet_thresholds",
    "thresholds_from_counts",
    # costs, parameter constraints, errors
    "module_muladds", "AT_LEAST_ONE", "FRACTION", "MOMENTUM", "NON_NEGATIVE", "OPEN_UNIT", "POSITIVE", "Constraint",
    "Each", "OneOf", "Optional", "Range", "ConfigError", "NonFiniteLossError",
]
