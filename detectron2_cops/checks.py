"""The predicates that the public boundaries share, one meaning each.

Every public entry point (the solver API, the AMWC layer, the PQ surrogate, the post-processor,
the evaluators, dataset registration, config loading, the tools' command lines) checks what it
receives with these helpers and raises ``ValueError`` naming the argument; code behind an entry
point trusts its caller. Imports neither torch nor detectron2.

* An *integer* is what ``operator.index`` accepts (Python and NumPy integers, 0-d integer
  tensors), never a bool and never a float, not even ``4.0``.
* A *real number* is a finite ``numbers.Real`` (NumPy floats included), never a bool.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import List, Optional


def as_int(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as a Python int, in ``[minimum, maximum]`` where given.

    Raises:
        ValueError: naming ``name``, for a bool, a non-integer (``4.0`` included) or a value
            out of range.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def as_float(value, name: str, minimum: Optional[float] = None, *, positive: bool = False) -> float:
    """``value`` as a finite Python float, ``>= minimum`` where given, ``> 0`` if ``positive``.

    Raises:
        ValueError: naming ``name``, for a bool, a non-real, NaN, inf or a value out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def as_choice(value, name: str, choices):
    """``value`` if it is one of ``choices``; else ValueError naming ``name`` and ``choices`` (shown as given)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def unmatched_entry_error(key: str, entry, names) -> ValueError:
    """The error for an ``entry`` of the config list ``key`` (a parameter-name prefix or pattern)
    that matches none of the model's parameter ``names``; lists the top-level modules."""
    top = sorted({n.split(".")[0] for n in names})
    return ValueError(f"{key} entry {entry!r} matches no parameter of the model "
                      f"(top-level modules with parameters: {top})")


def as_int_list(values, name: str, minimum: Optional[int] = None) -> List[int]:
    """``values`` (a list, tuple, array or tensor; not a string) as a list of Python ints, each
    an integer in the sense of :func:`as_int` and ``>= minimum`` where given.

    Raises:
        ValueError: naming ``name`` and the offending position.
    """
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}")
    return [as_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(values)]


def as_int_set(values, name: str, minimum: Optional[int] = None) -> frozenset:
    """``values`` (a list, tuple, set, range, array or tensor; not a string) as a frozenset of
    Python ints, each an integer in the sense of :func:`as_int` and ``>= minimum`` where given
    (e.g. the thing class ids of a model).

    Raises:
        ValueError: as :func:`as_int_list`.
    """
    if isinstance(values, (set, frozenset, range)):
        values = list(values)
    return frozenset(as_int_list(values, name, minimum))
