"""Mesh Workbench: service-mesh experiments with statistics that say whether a difference is real."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mesh-workbench")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0+unknown"
