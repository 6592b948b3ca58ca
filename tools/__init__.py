"""Maintainer tooling, outside the library, in folders by what it serves (tools/README.md): fit/ (will it
fit: the evidence), gpu/ (the GPU runs), environments/ (other Pythons and runtimes), runners/ (the course's
own runs and records); markers.py is the one way a tool writes a generated block into a page."""
