"""Civica: an open-source city-operations platform.

One live picture of a city's infrastructure, in one database, through one standard model
(NGSI-LD), that cannot by design become a surveillance system.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
