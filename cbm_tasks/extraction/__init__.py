"""Extraction: one image to per-parcel statistics (bands, rasterisation, zonal kernels)."""
