"""Parcels: read a parcel register, clean its geometries, keep it as a versioned parcel set."""
