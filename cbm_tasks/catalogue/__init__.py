"""Image catalogues: remote (CDSE OData, CDSE STAC), local, and the database registry."""
