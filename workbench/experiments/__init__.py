"""Experiment kinds: one module each, ``run(session)`` stores data, ``analyse(session)`` judges it.

Notebooks open a ``Session`` (``open_session``) and call ``session.execute(<kind module>)``;
``workbench run`` executes the notebooks with papermill (``workbench.report``).
"""

from workbench.experiments.session import ExperimentResult, Session, open_session

# kind -> notebook template (notebooks/<name>.ipynb); kinds not listed have no runner yet.
NOTEBOOKS = {
    "loadtest": "loadtest",
    "mesh_compare": "mesh_compare",
    "ab": "ab",
    "canary": "canary",
    "authz": "authz",
    "resilience": "resilience",
    "audit": "audit",
    "topology": "topology",
    "traces": "traces",
}

__all__ = ["NOTEBOOKS", "ExperimentResult", "Session", "open_session"]
