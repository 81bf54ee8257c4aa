"""The shared argument check: type errors and value errors that name the argument."""

from __future__ import annotations

import numpy as np
import pytest

from icl_heads.checks import check_int


def test_check_int_accepts_integers_and_names_bad_values():
    assert check_int(np.int64(3), "k", 0) == 3 and isinstance(check_int(np.int64(3), "k"), int)
    with pytest.raises(TypeError, match=r"k must be an integer, got float 2\.0; write 2"):
        check_int(2.0, "k")
    with pytest.raises(TypeError, match="seed must be an integer, got bool True"):
        check_int(True, "seed")
    with pytest.raises(ValueError, match="folds must be >= 2, got 1"):
        check_int(1, "folds", 2)
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        check_int(0, "n", 1, "a positive integer")
