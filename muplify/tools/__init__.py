"""Tools around the parametrization: the proxy sweep (:mod:`muplify.tools.tune`)."""
