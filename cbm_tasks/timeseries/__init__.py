"""Per-parcel time series: write one image's rows (``write``), read them back (``read``)."""
