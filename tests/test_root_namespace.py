"""The root namespace (``import icl_heads as ih``): analyses and result types only; the
names that moved out still import for one release, with a DeprecationWarning that names
their new import path."""

from __future__ import annotations

import importlib
import re

import pytest

import icl_heads as ih

MOVED = ("iter_batches", "collect", "write_trtl_page", "write_geometry_page")
#: Plumbing and presentation that must not be in ``__all__``.
NOT_ROOT = (*MOVED, "build_report", "write_report", "attention_example", "save_figure")


@pytest.mark.parametrize("name", MOVED)
def test_each_moved_name_warns_and_is_the_object_of_its_new_path(name):
    with pytest.warns(DeprecationWarning, match=rf"icl_heads\.{name} is deprecated") as caught:
        obj = getattr(ih, name)
    message = str(caught[0].message)
    path = re.search(rf"`from ([\w.]+) import {name}`", message).group(1)
    assert getattr(importlib.import_module(path), name) is obj


@pytest.mark.parametrize("name", MOVED)
def test_from_import_of_a_moved_name_still_works_with_a_warning(name):
    with pytest.warns(DeprecationWarning, match=name):
        exec(f"from icl_heads import {name}", {})


def test_moved_names_point_at_their_new_homes():
    with pytest.warns(DeprecationWarning, match="from icl_heads.activations import collect"):
        assert ih.collect is importlib.import_module("icl_heads.activations").collect
    with pytest.warns(DeprecationWarning, match="icl_heads.activations import iter_batches"):
        assert ih.iter_batches is importlib.import_module("icl_heads.activations").iter_batches


def test_all_lists_analyses_and_result_types_but_no_plumbing():
    assert not set(NOT_ROOT) & set(ih.__all__)
    assert len(ih.__all__) == len(set(ih.__all__))
    for name in ih.__all__:  # every listed name is a real attribute (no warning)
        assert name in vars(ih), name
    for name in (
        "tsla_scores",
        "ablation_experiment",
        "layer_geometry",
        "HeadScores",
        "ExperimentResult",
        "Head",
        "load_model",
        "build_prompts",
    ):
        assert name in ih.__all__


def test_dir_lists_the_public_names_and_not_the_moved_ones():
    names = dir(ih)
    assert set(ih.__all__) <= set(names)
    assert not set(MOVED) & set(names)


def test_unknown_names_raise_attribute_error_naming_the_name():
    with pytest.raises(AttributeError, match="no attribute 'not_a_function'"):
        ih.not_a_function  # noqa: B018
    assert not hasattr(ih, "also_missing")
