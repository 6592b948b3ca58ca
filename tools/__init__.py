"""Maintainer tooling, outside the library: `make course`
(course), `make sync` (timings), `make gpu-check`."""
