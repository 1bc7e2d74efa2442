"""Which bands a product has: its catalogue descriptors, a Sentinel-2 SAFE folder, or a raster file."""

from __future__ import annotations

from cbm_tasks.catalogue.product import Product
from cbm_tasks.extraction.bands import BandSource, bands_from_descriptors, raster_file_bands
from cbm_tasks.extraction.raster_io import RasterStore
from cbm_tasks.extraction.s2_safe import is_safe, safe_bands

__all__ = ["product_bands"]


def product_bands(product: Product, *, store: RasterStore) -> tuple[BandSource, ...]:
    """Return the bands of *product*, in extraction order.

    Band descriptors in ``product.attributes["bands"]`` win; otherwise ``product.location``
    is opened as a SAFE folder or as a single raster file.

    Raises:
        BandError: a descriptor is malformed, the location holds no band, or is missing.
        CorruptProductError: the metadata or raster cannot be read.
    """
    descriptors = product.attributes.get("bands")
    if descriptors:
        return bands_from_descriptors(descriptors, product=product.name)
    if is_safe(product.location, store=store):
        return safe_bands(product.location, store=store)
    location = product.location
    return raster_file_bands(location, store=store, product=product.name)
