"""plasticity: learning with synaptic plasticity rules (Cristian, Dabagia, Papadimitriou, Vempala).

The core engine (network, rules, rule-based learning, meta-learning, baselines) imports only torch
and numpy; Ray and MLflow live at the edges (evolution/ray_pool.py, ray_cluster.py, tracking.py).
"""

import os as _os

__version__ = "0.1.0"

# Ray's token authentication stays on wherever the platform starts or joins Ray (docs/security.md;
# plasticity.ray_cluster). Ray reads the mode once, when it is imported: set here, it is in force
# before any module of the package imports ray. A mode the user set is kept.
_os.environ.setdefault("RAY_AUTH_MODE", "token")


class PlasticityError(Exception):
    """A user-facing error: bad input, a missing file, an impossible config.

    The CLI prints its message as one line and exits with code 2.
    """
