"""The papers' experiments, each a function ``f(model, prompts_or_task, ...)`` returning an
:class:`~icl_heads.results.ExperimentResult`: ``trtl`` (arXiv 2509.24164) and ``geometry``
(arXiv 2505.18752)."""
