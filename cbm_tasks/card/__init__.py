"""Sentinel-1 CARD production: analysis-ready backscatter (CARD-BS) and coherence (CARD-COH6/12).

- :mod:`~cbm_tasks.card.jobs` turns catalogue products into jobs (pure functions);
- :mod:`~cbm_tasks.card.pairs` finds repeat-pass pairs of SLCs;
- :mod:`~cbm_tasks.card.backend` is the interface every backend implements;
- :mod:`~cbm_tasks.card.sarsen_bs` (pure Python), :mod:`~cbm_tasks.card.snap` (ESA SNAP ``gpt``)
  and :mod:`~cbm_tasks.card.odp` (CDSE on-demand production) are the backends.
"""
