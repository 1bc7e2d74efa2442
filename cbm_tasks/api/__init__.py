"""The REST API for data consumers: parcels, time series, markers, traffic lights and image chips.

One FastAPI application (:func:`cbm_tasks.api.app.create_app`), served standalone by
``cbm api serve`` or mounted in the Airflow api-server by ``plugins/cbm_api_plugin.py``. It
authenticates every request itself (:mod:`.auth`, :mod:`.deps`), reads through the
``cbm_reader`` role (:mod:`.context`) and keeps its SQL in :mod:`.queries`, :mod:`.features`
and :mod:`.chips`.
"""
