"""CARD jobs from recorded real CDSE OpenSearch answers (2019: S1A + S1B; 2023: S1A only)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
import shapely
from test_catalogue_dedup import opensearch_products

from cbm_tasks.card.jobs import CardJob, card_bs_jobs, coherence_jobs, plan_jobs
from cbm_tasks.catalogue.dedup import deduplicate
from cbm_tasks.catalogue.product import Product

# the boxes the recorded answers were searched with (their query.originalFilters.box)
KHARKIV = shapely.box(35.85799, 49.705688, 36.039682, 49.797363).wkt
PARIS = shapely.box(1.979, 48.705, 2.926, 49.151).wkt
FAR_AWAY = shapely.box(0.0, 0.0, 1.0, 1.0).wkt


def products(answer: str) -> list[Product]:
    return deduplicate(opensearch_products(answer))


def test_one_card_bs_job_per_grd_and_aoi() -> None:
    found = products("af8e6cd2")  # 46 SLC, 46 GRD-COG (after de-duplication)
    jobs = card_bs_jobs(found, {"kharkiv": KHARKIV, "far": FAR_AWAY})
    assert len(jobs) == 46
    assert {job.aoi for job in jobs} == {"kharkiv"}  # never a job for an AOI the product misses
    assert all(name.endswith("_COG") for job in jobs for name in job.source_names)
    first = jobs[0]
    assert first.key == "CARD-BS:kharkiv:S1A_IW_GRDH_1SDV_20190205T034702_20190205T034731_025789_02DE41_C11B_COG"
    assert (first.relative_orbit, first.orbit_direction, first.platform) == (167, "DESCENDING", "S1A")
    # the job's footprint is the product within the AOI: here the whole AOI box
    assert shapely.from_wkt(first.footprint_wkt).area == pytest.approx(shapely.from_wkt(KHARKIV).area)
    assert [job.acquired_at for job in jobs] == sorted(job.acquired_at for job in jobs)


def test_products_outside_every_aoi_or_without_footprint_make_no_job() -> None:
    found = products("af8e6cd2")
    assert card_bs_jobs(found, {"far": FAR_AWAY}) == []
    assert coherence_jobs(found, {"far": FAR_AWAY}) == []
    blind = [Product(**{**{f: getattr(p, f) for f in p.__slots__}, "footprint_wkt": None}) for p in found]
    assert card_bs_jobs(blind, {"kharkiv": KHARKIV}) == []


def test_six_day_coherence_while_two_satellites_fly_else_twelve() -> None:
    jobs = coherence_jobs(products("af8e6cd2"), {"kharkiv": KHARKIV})
    by_type = Counter(job.card_type for job in jobs)
    assert by_type == {"CARD-COH6": 21, "CARD-COH12": 21}
    for job in jobs:
        days = 6 if job.card_type == "CARD-COH6" else 12
        names = job.source_names
        assert len(names) == 2 and len(job.sources) == 2
        reference, later = (n.split("_")[5] for n in names)  # sensing start, e.g. 20190423T035516
        gap = _when(later) - _when(reference)
        assert abs(gap - timedelta(days=days)) < timedelta(minutes=5)
        assert job.coverage >= 0.5
    # a 6-day pair always mixes the two satellites; 12-day pairs here are S1A with S1A
    six = [job for job in jobs if job.card_type == "CARD-COH6"]
    assert all(job.source_names[0][:3] != job.source_names[1][:3] for job in six)
    # one reference makes one coherence product per AOI (the shortest interval wins)
    assert len({job.sources[0] for job in jobs}) == len(jobs)


def test_twelve_day_only_after_s1b() -> None:
    jobs = coherence_jobs(products("3c893698"), {"paris": PARIS})
    assert Counter(job.card_type for job in jobs) == {"CARD-COH12": 14}
    assert Counter(job.relative_orbit for job in jobs) == {8: 7, 110: 7}


def test_reference_needs_two_consecutive_slices_of_the_other_date() -> None:
    # An AOI as large as a whole S1A slice (a region): the S1B slices of the track are cut
    # about half a slice further, so the later date needs two consecutive slices to cover it.
    found = products("e211bebd")
    reference = next(p for p in found if p.name.startswith("S1A_IW_SLC__1SDV_20190426T152905"))
    assert reference.footprint_wkt is not None
    jobs = [job for job in coherence_jobs(found, {"oblast": reference.footprint_wkt}, intervals_days=(6,))
            if job.sources[0] == reference.uid]
    assert len(jobs) == 1
    job = jobs[0]
    assert job.key == (
        "CARD-COH6:oblast:S1A_IW_SLC__1SDV_20190426T152905_20190426T152932_026963_0308DF_65E7"
        "+S1B_IW_SLC__1SDV_20190502T152811_20190502T152838_016067_01E37D_87C3"
        "+S1B_IW_SLC__1SDV_20190502T152836_20190502T152904_016067_01E37D_9E21"
    )
    assert job.coverage == pytest.approx(0.9964, abs=1e-4)
    whole = shapely.from_wkt(reference.footprint_wkt)
    footprints = {p.name: shapely.from_wkt(p.footprint_wkt) for p in found}
    # each slice alone covers little more than half of the reference
    assert [round(footprints[n].intersection(whole).area / whole.area, 2) for n in job.source_names[1:]] == [0.55, 0.52]
    # over the small search box one later slice is enough, and the job has two sources
    (small,) = [j for j in coherence_jobs(found, {"kharkiv": KHARKIV}) if j.sources[0] == reference.uid]
    assert small.source_names == job.source_names[:2] and small.coverage == 1.0


def test_planning_is_idempotent_and_skips_known_keys() -> None:
    found = products("e211bebd")
    aois = {"kharkiv": KHARKIV}
    first = plan_jobs(found, aois)
    assert first == plan_jobs(list(reversed(found)), aois)  # same jobs, same keys, whatever the order
    assert len({job.key for job in first}) == len(first)
    assert Counter(job.card_type for job in first) == {"CARD-BS": 44, "CARD-COH6": 52}
    done = {job.key for job in first[:10]}
    assert [job.key for job in plan_jobs(found, aois, known_keys=done)] == [job.key for job in first[10:]]
    assert plan_jobs(found, aois, card_types=("CARD-BS",)) == [j for j in first if j.card_type == "CARD-BS"]


def test_job_round_trips_through_a_json_value() -> None:
    job = card_bs_jobs(products("e211bebd"), {"kharkiv": KHARKIV})[0]
    assert CardJob.from_dict(job.as_dict()) == job


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="intervals_days"):
        coherence_jobs([], {"a": KHARKIV}, intervals_days=(7,))
    with pytest.raises(ValueError, match="AOI 'broken'"):
        card_bs_jobs([], {"broken": "POLYGON ((0 0, 1"})
    with pytest.raises(ValueError, match="CARD-XX"):
        plan_jobs([], {"a": KHARKIV}, card_types=("CARD-XX",))


def _when(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S")
